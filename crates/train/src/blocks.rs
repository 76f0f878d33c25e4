//! Residual building blocks, split into a *shortcut* (identity or downsample) and a *body* so that
//! SLU can run the body on the executed samples only while skipped samples take the shortcut.

use crate::backend::Backend;
use crate::layers::{
    BatchNorm, Clamp, Conv2d, Ctx, DwConv2d, Param, give_array, out_size, pooled_copy, std_layout,
};
use ndarray::Array4;
use rand::Rng;
use rayon::prelude::*;

/// One block of a network. `B(x)` is the whole block output (for a CIFAR BasicBlock
/// `relu(F(x) + S(x))`), `S(x)` its shortcut.
pub trait Block: Send {
    fn name(&self) -> &str;
    fn in_channels(&self) -> usize;
    fn out_channels(&self) -> usize;
    /// Has a shortcut, so a sample may skip the body (SLU can gate it).
    fn residual(&self) -> bool;
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize);
    /// Body MACs for one sample with input `h x w` (the shortcut is not part of the skippable cost).
    fn body_macs(&self, h: usize, w: usize) -> u64;
    /// `S(x)` for all samples; `None` for a block without shortcut.
    fn shortcut_forward(
        &mut self,
        be: &mut dyn Backend,
        x: &Array4<f32>,
        ctx: Ctx,
    ) -> Option<Array4<f32>>;
    /// `B(x)` given the shortcut rows `s` of the same samples.
    fn body_forward(
        &mut self,
        be: &mut dyn Backend,
        x: &Array4<f32>,
        s: Option<&Array4<f32>>,
        ctx: Ctx,
    ) -> Array4<f32>;
    /// Returns (dL/dx through the body, dL/ds).
    fn body_backward(
        &mut self,
        be: &mut dyn Backend,
        dy: Array4<f32>,
        psg: bool,
    ) -> (Array4<f32>, Option<Array4<f32>>);
    /// dL/dx through the shortcut.
    fn shortcut_backward(
        &mut self,
        be: &mut dyn Backend,
        ds: Array4<f32>,
        psg: bool,
    ) -> Array4<f32>;
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param));
    fn visit_bn(&mut self, f: &mut dyn FnMut(&mut BatchNorm));
    /// Read-only walks in the same order as the visitors (checkpoints).
    fn for_each_param(&self, f: &mut dyn FnMut(&Param));
    fn for_each_bn(&self, f: &mut dyn FnMut(&BatchNorm));
}

/// CIFAR ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. A shape-changing block uses
/// a 1x1 strided conv + BN shortcut (option B).
pub struct BasicBlock {
    name: String,
    conv1: Conv2d,
    bn1: BatchNorm,
    act1: Clamp,
    conv2: Conv2d,
    bn2: BatchNorm,
    out_act: Clamp,
    down: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    pub fn new(name: &str, cin: usize, cout: usize, stride: usize, rng: &mut impl Rng) -> Self {
        let down = (stride != 1 || cin != cout).then(|| {
            (
                Conv2d::new(&format!("{name}.shortcut.conv"), cin, cout, 1, stride, rng),
                BatchNorm::new(&format!("{name}.shortcut.bn"), cout),
            )
        });
        BasicBlock {
            name: name.to_string(),
            conv1: Conv2d::new(&format!("{name}.conv1"), cin, cout, 3, stride, rng),
            bn1: BatchNorm::new(&format!("{name}.bn1"), cout),
            act1: Clamp::relu(),
            conv2: Conv2d::new(&format!("{name}.conv2"), cout, cout, 3, 1, rng),
            bn2: BatchNorm::new(&format!("{name}.bn2"), cout),
            out_act: Clamp::relu(),
            down,
        }
    }
}

impl Block for BasicBlock {
    fn name(&self) -> &str {
        &self.name
    }
    fn in_channels(&self) -> usize {
        self.conv1.cin
    }
    fn out_channels(&self) -> usize {
        self.conv2.cout
    }
    fn residual(&self) -> bool {
        true
    }
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            out_size(h, 3, self.conv1.stride, 1),
            out_size(w, 3, self.conv1.stride, 1),
        )
    }
    fn body_macs(&self, h: usize, w: usize) -> u64 {
        let (ho, wo) = self.out_hw(h, w);
        self.conv1.macs_per_sample(h, w) + self.conv2.macs_per_sample(ho, wo)
    }
    fn shortcut_forward(
        &mut self,
        be: &mut dyn Backend,
        x: &Array4<f32>,
        ctx: Ctx,
    ) -> Option<Array4<f32>> {
        Some(match &mut self.down {
            Some((conv, bn)) => {
                let y = conv.forward(be, x, ctx);
                bn.forward(y, ctx)
            }
            None => pooled_copy(x),
        })
    }
    fn body_forward(
        &mut self,
        be: &mut dyn Backend,
        x: &Array4<f32>,
        s: Option<&Array4<f32>>,
        ctx: Ctx,
    ) -> Array4<f32> {
        let y = self.conv1.forward(be, x, ctx);
        // BN and ReLU in one pass; the ReLU keeps its output (conv2's input) for its mask.
        let cap = self.act1.cap;
        let a = self.bn1.forward_act(y, ctx, move |v| v.clamp(0.0, cap));
        let y = self.conv2.forward(be, &a, ctx);
        self.act1.keep_output(a, ctx);
        let mut y = self.bn2.forward(y, ctx);
        add_assign(&mut y, s.expect("BasicBlock body needs its shortcut"));
        self.out_act.forward(y, ctx)
    }
    fn body_backward(
        &mut self,
        be: &mut dyn Backend,
        dy: Array4<f32>,
        psg: bool,
    ) -> (Array4<f32>, Option<Array4<f32>>) {
        let d = self.out_act.backward(dy);
        let ds = pooled_copy(&d);
        let d = self.bn2.backward(d);
        let d2 = self.conv2.backward(be, &d, true, psg).expect("need_dx");
        give_array(d);
        let d2 = self.act1.backward(d2);
        let d2 = self.bn1.backward(d2);
        let dx = self.conv1.backward(be, &d2, true, psg).expect("need_dx");
        give_array(d2);
        (dx, Some(ds))
    }
    fn shortcut_backward(
        &mut self,
        be: &mut dyn Backend,
        ds: Array4<f32>,
        psg: bool,
    ) -> Array4<f32> {
        match &mut self.down {
            Some((conv, bn)) => {
                let d = bn.backward(ds);
                let dx = conv.backward(be, &d, true, psg).expect("need_dx");
                give_array(d);
                dx
            }
            None => ds,
        }
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.conv1.w);
        f(&mut self.bn1.gamma);
        f(&mut self.bn1.beta);
        f(&mut self.conv2.w);
        f(&mut self.bn2.gamma);
        f(&mut self.bn2.beta);
        if let Some((c, b)) = &mut self.down {
            f(&mut c.w);
            f(&mut b.gamma);
            f(&mut b.beta);
        }
    }
    fn visit_bn(&mut self, f: &mut dyn FnMut(&mut BatchNorm)) {
        f(&mut self.bn1);
        f(&mut self.bn2);
        if let Some((_, b)) = &mut self.down {
            f(b);
        }
    }
    fn for_each_param(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.conv1.w);
        f(&self.bn1.gamma);
        f(&self.bn1.beta);
        f(&self.conv2.w);
        f(&self.bn2.gamma);
        f(&self.bn2.beta);
        if let Some((c, b)) = &self.down {
            f(&c.w);
            f(&b.gamma);
            f(&b.beta);
        }
    }
    fn for_each_bn(&self, f: &mut dyn FnMut(&BatchNorm)) {
        f(&self.bn1);
        f(&self.bn2);
        if let Some((_, b)) = &self.down {
            f(b);
        }
    }
}

/// MobileNetV2 inverted residual: [1x1 expand - BN - ReLU6] - 3x3 depthwise - BN - ReLU6 - 1x1
/// project - BN, plus the input when stride is 1 and channels match (only then is it gateable).
pub struct InvertedResidual {
    name: String,
    cin: usize,
    cout: usize,
    expand: Option<(Conv2d, BatchNorm, Clamp)>,
    dw: DwConv2d,
    bn_dw: BatchNorm,
    act_dw: Clamp,
    project: Conv2d,
    bn_proj: BatchNorm,
}

impl InvertedResidual {
    pub fn new(
        name: &str,
        cin: usize,
        cout: usize,
        stride: usize,
        expand_ratio: usize,
        rng: &mut impl Rng,
    ) -> Self {
        let hidden = cin * expand_ratio;
        let expand = (expand_ratio != 1).then(|| {
            (
                Conv2d::new(&format!("{name}.expand"), cin, hidden, 1, 1, rng),
                BatchNorm::new(&format!("{name}.bn_expand"), hidden),
                Clamp::relu6(),
            )
        });
        InvertedResidual {
            name: name.to_string(),
            cin,
            cout,
            expand,
            dw: DwConv2d::new(&format!("{name}.dw"), hidden, stride, rng),
            bn_dw: BatchNorm::new(&format!("{name}.bn_dw"), hidden),
            act_dw: Clamp::relu6(),
            project: Conv2d::new(&format!("{name}.project"), hidden, cout, 1, 1, rng),
            bn_proj: BatchNorm::new(&format!("{name}.bn_project"), cout),
        }
    }
}

impl Block for InvertedResidual {
    fn name(&self) -> &str {
        &self.name
    }
    fn in_channels(&self) -> usize {
        self.cin
    }
    fn out_channels(&self) -> usize {
        self.cout
    }
    fn residual(&self) -> bool {
        self.dw.stride == 1 && self.cin == self.cout
    }
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            out_size(h, 3, self.dw.stride, 1),
            out_size(w, 3, self.dw.stride, 1),
        )
    }
    fn body_macs(&self, h: usize, w: usize) -> u64 {
        let (ho, wo) = self.out_hw(h, w);
        self.expand
            .as_ref()
            .map_or(0, |(c, _, _)| c.macs_per_sample(h, w))
            + self.dw.macs_per_sample(h, w)
            + self.project.macs_per_sample(ho, wo)
    }
    fn shortcut_forward(
        &mut self,
        _be: &mut dyn Backend,
        x: &Array4<f32>,
        _ctx: Ctx,
    ) -> Option<Array4<f32>> {
        self.residual().then(|| x.clone())
    }
    fn body_forward(
        &mut self,
        be: &mut dyn Backend,
        x: &Array4<f32>,
        s: Option<&Array4<f32>>,
        ctx: Ctx,
    ) -> Array4<f32> {
        let y = match &mut self.expand {
            Some((conv, bn, act)) => {
                let y = conv.forward(be, x, ctx);
                let y = bn.forward(y, ctx);
                act.forward(y, ctx)
            }
            None => x.clone(),
        };
        let y = self.dw.forward(be, &y, ctx);
        let y = self.bn_dw.forward(y, ctx);
        let y = self.act_dw.forward(y, ctx);
        let y = self.project.forward(be, &y, ctx);
        let mut y = self.bn_proj.forward(y, ctx);
        if let Some(s) = s {
            add_assign(&mut y, s);
        }
        y
    }
    fn body_backward(
        &mut self,
        be: &mut dyn Backend,
        dy: Array4<f32>,
        psg: bool,
    ) -> (Array4<f32>, Option<Array4<f32>>) {
        let ds = self.residual().then(|| dy.clone());
        let d = self.bn_proj.backward(dy);
        let d = self.project.backward(be, &d, true, psg).expect("need_dx");
        let d = self.act_dw.backward(d);
        let d = self.bn_dw.backward(d);
        let d = self.dw.backward(be, &d, true, psg).expect("need_dx");
        let dx = match &mut self.expand {
            Some((conv, bn, act)) => {
                let d = act.backward(d);
                let d = bn.backward(d);
                conv.backward(be, &d, true, psg).expect("need_dx")
            }
            None => d,
        };
        (dx, ds)
    }
    fn shortcut_backward(
        &mut self,
        _be: &mut dyn Backend,
        ds: Array4<f32>,
        _psg: bool,
    ) -> Array4<f32> {
        ds
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some((c, b, _)) = &mut self.expand {
            f(&mut c.w);
            f(&mut b.gamma);
            f(&mut b.beta);
        }
        f(&mut self.dw.w);
        f(&mut self.bn_dw.gamma);
        f(&mut self.bn_dw.beta);
        f(&mut self.project.w);
        f(&mut self.bn_proj.gamma);
        f(&mut self.bn_proj.beta);
    }
    fn visit_bn(&mut self, f: &mut dyn FnMut(&mut BatchNorm)) {
        if let Some((_, b, _)) = &mut self.expand {
            f(b);
        }
        f(&mut self.bn_dw);
        f(&mut self.bn_proj);
    }
    fn for_each_param(&self, f: &mut dyn FnMut(&Param)) {
        if let Some((c, b, _)) = &self.expand {
            f(&c.w);
            f(&b.gamma);
            f(&b.beta);
        }
        f(&self.dw.w);
        f(&self.bn_dw.gamma);
        f(&self.bn_dw.beta);
        f(&self.project.w);
        f(&self.bn_proj.gamma);
        f(&self.bn_proj.beta);
    }
    fn for_each_bn(&self, f: &mut dyn FnMut(&BatchNorm)) {
        if let Some((_, b, _)) = &self.expand {
            f(b);
        }
        f(&self.bn_dw);
        f(&self.bn_proj);
    }
}

/// `y += s`, element-wise in parallel (activation-sized; same result as the serial add).
pub(crate) fn add_assign(y: &mut Array4<f32>, s: &Array4<f32>) {
    assert_eq!(y.dim(), s.dim(), "add_assign shapes");
    if !y.is_standard_layout() {
        *y = std_layout(std::mem::take(y));
    }
    let ys = y.as_slice_mut().expect("standard layout");
    match s.as_slice() {
        Some(ss) => ys
            .par_chunks_mut(1 << 15)
            .zip(ss.par_chunks(1 << 15))
            .for_each(|(a, b)| {
                for (a, &b) in a.iter_mut().zip(b) {
                    *a += b;
                }
            }),
        None => {
            let y = ndarray::ArrayViewMut4::from_shape(s.dim(), ys).expect("same shape");
            ndarray::Zip::from(y).and(s).par_for_each(|a, &b| *a += b);
        }
    }
}
