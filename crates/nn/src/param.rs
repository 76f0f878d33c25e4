//! Uniform access to trainable parameters and non-trainable buffers, by stable name.

/// One trainable tensor with its gradient, both as flat row-major slices.
///
/// `name` is stable across runs (`stage2.block0.conv1.weight`): the optimizer keys its momentum
/// buffers by it and checkpoints store it. `grad` holds whatever the layer's `GemmEngine` produced
/// (a PSG engine writes signs), accumulated since the last `zero_grad`.
pub struct Param<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: &'a mut [f32],
    pub grad: &'a mut [f32],
}

/// A non-trainable state tensor (BatchNorm running statistics) that checkpoints must carry.
pub struct Buffer<'a> {
    pub name: String,
    pub value: &'a mut [f32],
}

/// Whether a [`TensorRef`] is a trainable parameter or a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    Param,
    Buffer,
}

/// Read-only view of a named parameter or buffer.
pub struct TensorRef<'a> {
    pub name: String,
    pub kind: TensorKind,
    pub value: &'a [f32],
}

/// Anything that owns parameters. Implementations list them in a fixed order.
pub trait Module {
    /// Appends this module's parameters (in a fixed order) to `out`.
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>);
    /// Appends read-only views of every parameter and buffer (same names and order as
    /// `params_into` then `buffers_into`), for checkpoints taken through `&self`.
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>);
    /// Appends this module's buffers to `out` (default: none).
    fn buffers_into<'a>(&'a mut self, _out: &mut Vec<Buffer<'a>>) {}

    fn params_mut(&mut self) -> Vec<Param<'_>> {
        let mut v = Vec::new();
        self.params_into(&mut v);
        v
    }
    fn buffers_mut(&mut self) -> Vec<Buffer<'_>> {
        let mut v = Vec::new();
        self.buffers_into(&mut v);
        v
    }
    /// Clears every accumulated gradient.
    fn zero_grad(&mut self) {
        for p in self.params_mut() {
            p.grad.fill(0.0);
        }
    }
    /// Number of trainable scalars.
    fn num_params(&mut self) -> usize {
        self.params_mut().iter().map(|p| p.value.len()).sum()
    }
}
