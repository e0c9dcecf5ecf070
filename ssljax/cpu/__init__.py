"""What ssljax does differently on a CPU, in one place: convolution and BatchNorm kernels for the
ResNets, a GELU with a hand-written gradient, and the process setup of the entry points (XLA:CPU
options, tcmalloc). Models reach the kernels through `config.model.kernels`; nothing here runs on
a GPU or TPU unless a config asks for it."""
