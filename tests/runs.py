"""The `medseg train` command as the tests call it: data folder, run folder and flags in one call.

A thin adapter over medseg.training.train.train_folder (which takes an Options object for how to run)."""

from medseg.training.command import Options, train_folder


def train(data=None, out=None, *, quiet=False, threads=None, callback=None, resume=None, **flags):
    return train_folder(data, out, resume_run=resume, options=Options(quiet=quiet, threads=threads, callback=callback),
                        **flags)
