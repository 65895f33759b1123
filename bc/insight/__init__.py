"""Pictures that explain a model: data and prediction plots logged to each training run
(`bc.insight.callback.InsightPlots`, PNGs under the run's `plots/`) and VisualBackProp saliency
(`bc.insight.saliency`) drawn on a drive's frames by scripts/video.py and scripts/evaluate.py.
"""
