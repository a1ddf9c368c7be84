"""Mask privacy: occlusion masks that keep a masked-image recogniser accurate but defeat ordinary
recognisers and inpainting attacks.

    masks     the overlay convention (image x mask, 1 kept, 0 hidden), mask sets, placements
    bins      the hole-area bins (no torch: the synthetic mask generator aims at them too)
    data      identity images (synthetic faces, an ImageFolder, Parquet)
    training  training steps of the original / masked recogniser and the inpainter
    grid      the mask x image grid predictor (Ray Data actors and the plain loop share it), Table 1
    funnel    the selection funnel (gap -> top-K -> inpainting attack -> drop), Table 2
    report    Markdown + PNG report;  cli: `docray privacy ...`
    openset   the open-set protocol: disjoint identity roles, TAR at FAR and rank-1 from embeddings
    attacks   the attack suite (masked image + mask -> reconstruction) and the blur / mosaic baselines
    suite     the attacker table: the defender's and the attacker's models on the open set, per mask
    recognize     the served predictor: a face masked on the client (checked) -> its embedding
    verification  the threshold (calibrated at FAR 1e-2 on held-out identities), the gallery match,
                  the serving policy (refuses without masks that meet the attacker bounds)
    client        masks on the client, calls /v1/privacy/enrol, verify, identify
"""
