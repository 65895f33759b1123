"""Autonomous mode: serve a model to the simulator (``server``), control speed
(``controller``), turn frames into steering (``predictor``), save the frames of a drive
(``frames``) and make a video of them (``video``).

Submodules are imported on use: ``bc.drive.server`` pulls in eventlet / Socket.IO, which
the video tool and tests of the controller do not need.
"""
