"""After the masks: connected objects on the sphere, event tracking through time,
statistics and climatology maps.

* :mod:`climseg.sphere`: cell areas, great-circle distances, centroids and
  connected components on a latitude-longitude grid (joined across the date line on
  global grids, never across the poles): the one geometry module that prediction,
  labelling, tracking and analysis share.
* :mod:`climseg.analytics.track`: ``climseg track``, masks in, event ids and an events table out.
* :mod:`climseg.analytics.analyze`: ``climseg analyze``, events in, maps, histograms and a summary out.
"""
