"""``sop-perf``: how fast SOP's training step and its SE retrieval are, against iBOT and DINO.

A tool of its own, not part of the benchmark: it times the benchmark's real training step
(it imports ``sop_plugin.bench``; the benchmark never imports it).

- :mod:`~sop_plugin.perf.cli`: the ``sop-perf`` command, perf.json and the targets;
- :mod:`~sop_plugin.perf.settings`: the named model/crop/batch settings it times;
- :mod:`~sop_plugin.perf.step`: interleaved step timing and peak memory of the three methods;
- :mod:`~sop_plugin.perf.breakdown`: where SOP's step goes (the objective's timing hook);
- :mod:`~sop_plugin.perf.retrieval`: search time and recall per backend, design choices;
- :mod:`~sop_plugin.perf.timing`: synchronised clocks and a phase timer;
- :mod:`~sop_plugin.perf.plot`: perf.png.

The layout of perf.json and the measured numbers are in docs/performance.md.
"""
