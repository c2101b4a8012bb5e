"""Dataset contract, image/DICOM ingest, vote aggregation and the meta/test/train split."""
