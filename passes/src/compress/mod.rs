//! Compression that changes a model's structure or its weights' values:
//! structured pruning of channels (`channels`), low-rank factorization of
//! product weights (`lowrank`, with its `svd`), and the masks of
//! unstructured magnitude pruning (`sparsity`). Each is a graph-to-graph
//! pass over `nnc_ir` plus the arithmetic on weights it needs; choosing
//! what to compress (saliencies, ranks) and moving tensors in and out of
//! checkpoints are the runtime's.

pub mod channels;
pub mod lowrank;
pub mod sparsity;
pub mod svd;
