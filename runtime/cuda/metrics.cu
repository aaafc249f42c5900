// Loss and top-k accuracy accumulated on the device (see runtime/cuda/metrics.h).
