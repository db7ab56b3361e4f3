"""Caffe's file formats: Datum records, mean files, prototxt data layers and their specs."""
