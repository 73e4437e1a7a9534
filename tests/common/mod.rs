//! What several root test binaries share.

/// Every example in `examples/`, smallest first.
pub const EXAMPLES: [&str; 10] = [
    "xor",
    "digits_mlp",
    "running_sum",
    "reuters_bow",
    "reuters_lstm",
    "mnist_mlp",
    "mnist_sparse",
    "lenet",
    "fashion_cnn",
    "cifar_cnn",
];
