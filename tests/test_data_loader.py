"""The training input path on genuine VOC JPEGs: the flip, and batches from loader workers (sent packed)
equal to those loaded in the training process."""
import torch

from fcos.data import VOCDataset, build_loader


def test_flip_mirrors_the_image_and_its_boxes(voc_mini):
    plain = VOCDataset(voc_mini, "trainval", train=True)
    flipped = VOCDataset(voc_mini, "trainval", train=True)
    plain.flip_prob, flipped.flip_prob = 0.0, 1.0
    for i in range(len(plain)):
        (image, target), (mirror, mirrored) = plain[i], flipped[i]
        w = image.shape[-1]
        assert torch.equal(mirror, image.flip(-1)) and mirror.stride() == image.stride()
        x1, y1, x2, y2 = target["boxes"].unbind(1)
        assert torch.equal(mirrored["boxes"], torch.stack((w - x2, y1, w - x1, y2), 1))
        assert torch.equal(mirrored["labels"], target["labels"])


def test_batches_from_workers_equal_those_loaded_here(voc_mini):
    ds = VOCDataset(voc_mini, "trainval", train=True)
    ds.flip_prob = 0.0   # flips come from each worker's own random stream: none here, so the batches must match
    here = list(build_loader(ds, 3, shuffle=True, num_workers=0, seed=5))
    sent = list(build_loader(ds, 3, shuffle=True, num_workers=2, seed=5))
    assert len(here) == len(sent) == 3
    for (images, targets), (images_w, targets_w) in zip(here, sent, strict=True):
        for a, b in zip(images, images_w, strict=True):
            assert torch.equal(a, b) and a.dtype == b.dtype and a.stride() == b.stride()
        for a, b in zip(targets, targets_w, strict=True):
            assert a.keys() == b.keys() and a["image_id"] == b["image_id"]
            for k in ("boxes", "labels", "difficult", "iscrowd"):
                assert torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype
        # packed: the batch's images arrived as one buffer, not one tensor each
        assert len({im.untyped_storage().data_ptr() for im in images_w}) == 1
