"The informative-frame filter (`mes_mtl.quality`): calibration on the shared demo dataset, and thresholds as parameters."
import numpy as np
from PIL import Image
from mes_mtl.data import limuc_items
from mes_mtl.quality import QualityThresholds, frame_quality, REASONS


def test_every_demo_image_is_informative(demo_root):
    "The default thresholds pass every image of the shared demo dataset (other seeds than the notebook's calibration set)."
    items = limuc_items(demo_root)
    frames = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in items.path])
    q = frame_quality(frames)
    assert q.informative.all(), q[~q.informative].flag.value_counts()
    assert set(q.flag) == {''}


def test_each_reason_has_its_threshold():
    grey = np.full((288, 352, 3), 128, np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, (288, 352, 3), dtype=np.uint8)
    # noise is no white-light view of mucosa (a third of its light is red, many of its averaged pixels are grey)
    assert frame_quality(noisy).flag.tolist() == ['enhanced+instrument']
    colours = dict(min_redness=0, max_grey=1, grey_view=1)  # bounds that pass noise
    assert frame_quality(noisy, QualityThresholds(**colours)).flag.tolist() == ['']
    # loosen every bound: a flat grey frame passes; tighten one: only its reason is named
    loose = QualityThresholds(min_sharpness=0, min_brightness=0, max_dark=1, max_bright=1, min_saturation=0, min_contrast=0,
                              **colours)
    assert frame_quality(grey, loose).flag.tolist() == ['']
    tight = {'blurred': dict(min_sharpness=1e9), 'dark': dict(min_brightness=255), 'overexposed': dict(max_bright=-0.0, bright_level=0),
             'washed-out': dict(min_saturation=1.1), 'flat': dict(min_contrast=1e9), 'enhanced': dict(min_redness=1),
             'instrument': dict(max_grey=0)}
    assert set(tight) == set(REASONS)
    for reason, kw in tight.items():
        assert frame_quality(noisy, QualityThresholds(**{**colours, **kw})).flag.tolist() == [reason], reason
