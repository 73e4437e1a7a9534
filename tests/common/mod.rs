//! What several root test binaries share.

/// Every example in `examples/`, smallest first.
pub const EXAMPLES: [&str; 6] = [
    "xor",
    "digits_mlp",
    "mnist_mlp",
    "lenet",
    "fashion_cnn",
    "cifar_cnn",
];
