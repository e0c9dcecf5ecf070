"""`python -m ssljax.visualize {attention|embeddings|reconstructions} --workdir=DIR`: pictures of
a run's latest checkpoint (the drawing lives in `ssljax.monitor.visualize`)."""

from absl import app, flags

from ssljax.monitor.visualize import main

if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Run directory written by ssljax.main.')
  app.run(main)
