"""City analytics: pure functions from values to answers with their evidence.

No clock, no storage, no I/O: the routes query storage, pass plain values (and ``now``) in,
and return what comes out. AQI (:mod:`.aqi`), traffic congestion (:mod:`.congestion`), water
leak suspicion (:mod:`.leaks`) and device status (:mod:`.status`).
"""
