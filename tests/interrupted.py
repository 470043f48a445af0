"""A training run killed between two checkpoints, for the resume tests of the kit's trainers."""

import pytest
import torch


def run_killed_after_first_checkpoint(monkeypatch, module, run) -> None:
    """Call ``run()`` with ``module.torch.save`` raising ``KeyboardInterrupt`` on its second call
    (the run dies before epoch 2's checkpoint is written); torch.save is restored after."""
    saves = []
    real_save = torch.save

    def interrupt_after_first_epoch(obj, path, *a, **k):
        if saves:
            raise KeyboardInterrupt
        saves.append(path)
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(module.torch, "save", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(module.torch, "save", real_save)
    assert len(saves) == 1
