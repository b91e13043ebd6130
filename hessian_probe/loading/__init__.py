"""Turning files and names into the pieces of a Problem: data sets and models."""
