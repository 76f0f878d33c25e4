//! Data sets: IDX (MNIST family) and CIFAR-10 binary readers, normalisation, shuffling, batching, augmentation.
