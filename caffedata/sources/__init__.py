"""Where records come from: Caffe's LMDB and LevelDB databases."""
