"""The preprocessed-array cache: reused when nothing changed, rebuilt when a file or a setting changed,
never read when its writing was interrupted."""

from __future__ import annotations

import os

import numpy as np
import torch
import pytest

from medseg.data import arrays as data
from medseg.adapters import load_dataset
from medseg.app.cli import main

from conftest import LGG_PREP, write_lgg_replica

PREP = LGG_PREP


def test_cache_hit_equals_fresh_read_and_key_follows_files_and_settings(tmp_path, private_cache):
    ds = load_dataset(write_lgg_replica(tmp_path / "k", patients=2, slices=3))
    first = data.load_arrays(ds.items, PREP)
    entries = list(private_cache.iterdir())
    assert len(entries) == 1 and (entries[0] / "done.json").is_file()
    again = data.load_arrays(ds.items, PREP)
    assert np.array_equal(first.images.numpy(), again.images.numpy())
    assert np.array_equal(first.masks.numpy(), again.masks.numpy())
    assert data.cache_key(ds.items, {**PREP, "image_size": 64}) != data.cache_key(ds.items, PREP)
    # the body mask of before the setting keeps the caches written then; another body mask is another array
    assert data.cache_key(ds.items, {**PREP, "body_mask": "fraction"}) == data.cache_key(ds.items, PREP)
    assert data.cache_key(ds.items, {**PREP, "body_mask": "log-otsu"}) != data.cache_key(ds.items, PREP)
    key = data.cache_key(ds.items, PREP)
    st = ds.items[0].image.stat()
    os.utime(ds.items[0].image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed
    assert data.cache_key(ds.items, PREP) != key


def test_interrupted_cache_write_leaves_no_entry(tmp_path, private_cache, monkeypatch):
    ds = load_dataset(write_lgg_replica(tmp_path / "k", patients=1, slices=3))
    real_save, calls = np.save, []

    def dying_save(path, arr):
        calls.append(path)
        if len(calls) == 2:  # images written, then the process "dies" writing the masks
            raise KeyboardInterrupt
        real_save(path, arr)

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        data.load_arrays(ds.items, PREP)
    assert list(private_cache.iterdir()) == []  # neither an entry nor a temp folder
    monkeypatch.setattr(np, "save", real_save)
    arrays = data.load_arrays(ds.items, PREP)
    assert arrays.images.shape == (3, 3, 32, 32)


def test_prepare_command_builds_what_train_reads(tmp_path, private_cache, capsys):
    root = write_lgg_replica(tmp_path / "k", patients=2, slices=3)
    with pytest.raises(SystemExit) as e:
        main(["prepare", str(root), "--image-size", "32"])
    assert e.value.code in (0, None)
    assert "6 images cached" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["prepare", str(root), "--image-size", "32"])
    assert "already cached" in capsys.readouterr().out


def test_neighbours_stack_adjacent_slices_of_the_same_case(tmp_path):
    ds = load_dataset(write_lgg_replica(tmp_path / "k", patients=2, slices=4))
    arrays = data.load_arrays(ds.items, PREP, cache=False)
    stacked = data.with_neighbours(arrays, 1)
    assert stacked.images.shape == (8, 9, 32, 32)
    first = [i for i, it in enumerate(ds.items) if it.patient == ds.patients[0]]
    a, b, c = first[0], first[1], first[2]
    assert torch.equal(stacked.images[b, 0:3], arrays.images[a])  # slice above
    assert torch.equal(stacked.images[b, 3:6], arrays.images[b])  # itself in the middle
    assert torch.equal(stacked.images[b, 6:9], arrays.images[c])  # slice below
    assert torch.equal(stacked.images[a, 0:3], arrays.images[a])  # edge: repeated
    last_of_first = first[-1]
    assert torch.equal(stacked.images[last_of_first, 6:9], arrays.images[last_of_first])  # never the next patient
