"""Modules that own parameters and hook points."""
