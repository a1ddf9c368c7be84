"""Cut-out screening: find uploads that carry tiles of sensitive pictures (1x3 ... 3x3 cut-outs).

    templates   cut a picture by RxC grids; tiles cover it exactly
    dedup       exact hash, perceptual hash, descriptor near-duplicates, flat-tile filter
    rules       attribute filters (release time, cut type) and the extension rule
    index       faiss TileIndex: exact below a size threshold, IVF above; filtered search; save/load
    library     versioned tiles (Parquet) + index under DOCRAY_HOME/indexes/screening; incremental append
    ocr         text regions (rapidocr, detection only, cached engine)
    matching    the method: regions -> descriptor -> primary / extended match -> verdict with evidence
    embed, augment, data, predictors   descriptor loading, copy edits, training data, batch predictors
    cli         `docray screening query|info` (`build`, `rescan`: cluster/cli.py)

Ray lives in data_jobs/screening_library.py, data_jobs/screening_archive.py, train_jobs/train_screening.py
and serve_apps/screening.py; nothing here imports it.
"""
