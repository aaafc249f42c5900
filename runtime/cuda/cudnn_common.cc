// What the cuDNN kernels (conv.cc, batchnorm.cc) share.
