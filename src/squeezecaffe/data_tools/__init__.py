"""Image folders, list files and dataset importers -> LMDBs of Caffe Datums that real Caffe reads, with mean files."""
