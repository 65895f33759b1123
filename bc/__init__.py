"""bc: a behavioral-cloning lab for the Udacity self-driving-car simulator."""

__version__ = "0.1.0"
