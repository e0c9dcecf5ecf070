"""What ssljax does differently on a CPU, in one place: convolution and BatchNorm kernels, a GELU
with a hand-written gradient (models take them through `config.model.kernels`, resolved once in
ssljax.models.kernels), and the process setup of the entry points (`process.prepare`: XLA:CPU
options, tcmalloc). Importing ssljax as a library changes nothing in the process."""
