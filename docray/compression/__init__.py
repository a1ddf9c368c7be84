"""Regen compression: recognise a document, regenerate a smaller clean image of it, compress per type.

    file_types   the file-type library (type -> compression base, second threshold) and threshold order
    quality      the documented quality formula (levels 1-100) and the search that meets the limit
    seals        red/blue circle, ellipse, rectangle, square seals found with OpenCV
    portrait     portrait detection (Haar cascade / slot), split (background or blank fill), paste back
    layout       the deterministic glyph/layout rendering the generator is conditioned on
    data         tensors for the models; RegenBatch: rows of a documents dataset -> a training batch
    convergence  the joint training's stopping rule
    pipeline     RegenCompressor: recognise -> generate -> paste -> compress -> store (also the batch predictor)
Models: `docray.models.regen`. Jobs: `train_jobs.train_regen`, `data_jobs.recompress_archive`.
Serving: `serve_apps.compression`. Terminal side: `docray.client.compress_on_terminal`.
"""
