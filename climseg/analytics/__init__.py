"""After the masks: heuristic labelling, event tracking through time, scores against a
generated series' truth, statistics and climatology maps.

* :mod:`climseg.analytics.label`: ``climseg label``, fields in, class masks out (the runner:
  files, processes, MPI, writing); its physics is :mod:`climseg.analytics.cyclones` and
  :mod:`climseg.analytics.rivers`, its thresholds :mod:`climseg.analytics.label_options`.
* :mod:`climseg.analytics.track`: ``climseg track``, masks in, event ids and an events table out.
* :mod:`climseg.analytics.scoring`: tracked events against the generator's true events.
* :mod:`climseg.analytics.analyze`: ``climseg analyze``, events in, maps, histograms and a summary out.

Geometry on the sphere is :mod:`climseg.sphere` (a base module that data, predict and these
share); the files read and written are :mod:`climseg.data.masks` and :mod:`climseg.data.events`.
"""
