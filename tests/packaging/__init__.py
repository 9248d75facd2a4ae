"""Packaging: lockfiles, Dockerfiles and the images' install, checked without Docker."""
