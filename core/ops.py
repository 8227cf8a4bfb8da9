"""ATen op families, as the graph analysis sees them.

Only ops listed here let channels through; anything else stops the channels that reach it, so the
analysis errs toward leaving a layer alone, never toward emitting a wrong model.
"""

from __future__ import annotations

import operator

import torch

aten = torch.ops.aten

CONV = {
    aten.conv1d.default,
    aten.conv2d.default,
    aten.conv3d.default,
    aten.convolution.default,
}
CONV_TRANSPOSE = {aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}
LINEAR = {aten.linear.default}
# batched over leading axes: attention heads are a batch axis of both operands
MATMUL = {aten.matmul.default, aten.bmm.default}
ATTENTION = {aten.scaled_dot_product_attention.default}

# batch norm in inference form: (input, weight, bias, running_mean, running_var, ...)
BATCH_NORM = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
# each channel on its own, with per-channel parameters: (input, weight, ...)
INSTANCE_NORM = {aten.instance_norm.default}
PRELU = {aten.prelu.default, aten._prelu_kernel.default}
LAYER_NORM = {aten.layer_norm.default, aten.native_layer_norm.default}
GROUP_NORM = {aten.group_norm.default, aten.native_group_norm.default}

# channel-wise ops whose first argument is the only tensor: each channel maps to itself
ELEMENTWISE = {
    aten.relu.default,
    aten.relu_.default,
    aten.gelu.default,
    aten.silu.default,
    aten.silu_.default,
    aten.sigmoid.default,
    aten.tanh.default,
    aten.hardswish.default,
    aten.hardswish_.default,
    aten.hardsigmoid.default,
    aten.hardtanh.default,
    aten.hardtanh_.default,
    aten.relu6.default,
    aten.relu6_.default,
    aten.leaky_relu.default,
    aten.rrelu.default,
    aten.log_sigmoid.default,
    aten.hardshrink.default,
    aten.softshrink.default,
    aten.logit.default,
    aten.elu.default,
    aten.celu.default,
    aten.threshold.default,
    aten.sign.default,
    aten.selu.default,
    aten.mish.default,
    aten.softplus.default,
    aten.erf.default,
    aten.erfc.default,
    aten.exp.default,
    aten.expm1.default,
    aten.log.default,
    aten.log1p.default,
    aten.log2.default,
    aten.log10.default,
    aten.sin.default,
    aten.cos.default,
    aten.floor.default,
    aten.ceil.default,
    aten.round.default,
    aten.round.decimals,
    aten.trunc.default,
    aten.frac.default,
    aten.nan_to_num.default,
    aten.abs.default,
    aten.neg.default,
    aten.sqrt.default,
    aten.rsqrt.default,
    aten.reciprocal.default,
    aten.square.default,
    aten.pow.Tensor_Scalar,
    aten.clamp.default,
    aten.clamp_min.default,
    aten.clamp_max.default,
    aten.dropout.default,
    aten.feature_dropout.default,
    aten.alpha_dropout.default,
    aten.native_dropout.default,
    aten.clone.default,
    aten.contiguous.default,
    aten.alias.default,
    aten.detach.default,
    aten.lift_fresh_copy.default,
    aten._to_copy.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten.to.device,
    aten.add.Scalar,
    aten.sub.Scalar,
    aten.mul.Scalar,
    aten.div.Scalar,
    # position-wise tests against a scalar (a decomposed softmax's guard for rows that are all -inf,
    # torch.where(x > 0, ...)) and constants shaped like their input
    aten.eq.Scalar,
    aten.ne.Scalar,
    aten.gt.Scalar,
    aten.ge.Scalar,
    aten.lt.Scalar,
    aten.le.Scalar,
    aten.logical_not.default,
    aten.full_like.default,
    aten.zeros_like.default,
    aten.ones_like.default,
}

# copies of a tensor: every value stays where it is
COPIES = {aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default}

# spatial ops on (N, C, *spatial): channels stay on axis 1
SPATIAL = {
    aten.max_pool1d.default,
    aten.max_pool2d.default,
    aten.max_pool3d.default,
    aten.avg_pool1d.default,
    aten.avg_pool2d.default,
    aten.avg_pool3d.default,
    aten.adaptive_avg_pool1d.default,
    aten.adaptive_avg_pool2d.default,
    aten._adaptive_avg_pool2d.default,
    aten.adaptive_avg_pool3d.default,
    aten.upsample_nearest1d.default,
    aten.upsample_nearest1d.vec,
    aten.upsample_nearest2d.default,
    aten.upsample_nearest2d.vec,
    aten.upsample_bilinear2d.default,
    aten.upsample_bilinear2d.vec,
    aten.upsample_bicubic2d.default,
    aten.upsample_bicubic2d.vec,
    aten.upsample_linear1d.default,
    aten.upsample_linear1d.vec,
    aten._upsample_nearest_exact2d.default,
    aten._upsample_nearest_exact2d.vec,
    # what aten.pad becomes in a decomposed graph (reflect / replicate modes pad the spatial axes only)
    aten.reflection_pad1d.default,
    aten.reflection_pad2d.default,
    aten.reflection_pad3d.default,
    aten.replication_pad1d.default,
    aten.replication_pad2d.default,
    aten.replication_pad3d.default,
}
# spatial ops that return (values, indices); the values are element 0
SPATIAL_TUPLE = {
    aten.max_pool2d_with_indices.default,
    aten.max_pool1d_with_indices.default,
    aten.max_pool3d_with_indices.default,
    aten.adaptive_max_pool1d.default,
    aten.adaptive_max_pool2d.default,
}
PAD = {aten.constant_pad_nd.default, aten.pad.default}
ROLL = {aten.roll.default}

BINARY = {
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.mul.Tensor,
    aten.div.Tensor,
    aten.maximum.default,
    aten.minimum.default,
}
ADDITIVE = {aten.add.Tensor, aten.sub.Tensor}

REDUCE = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default, aten.any.dim}
EXPAND = {aten.expand.default}
REPEAT_INTERLEAVE = {aten.repeat_interleave.self_int}
WHERE = {aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar}
SOFTMAX = {aten._softmax.default, aten.softmax.int, aten._log_softmax.default, aten.log_softmax.int}
CAT = {aten.cat.default}
SLICE = {aten.slice.Tensor}
# the analysis reads splits in the explicit form (``canonical.explicit_splits``): one size per part
SPLIT = {aten.split_with_sizes.default}
EQUAL_SPLITS = {aten.split.Tensor, aten.chunk.default}
SELECT = {aten.select.int}
UNBIND = {aten.unbind.int}

RESHAPE = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
FLATTEN = {aten.flatten.using_ints}
UNFLATTEN = {aten.unflatten.int}
SQUEEZE = {aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default}
UNSQUEEZE = {aten.unsqueeze.default}
PERMUTE = {aten.permute.default}
TRANSPOSE = {aten.transpose.int, aten.t.default}

# ops that read shapes or assert on them; they never move values across channels
SHAPE_ONLY = {
    aten.sym_size.int,
    aten.sym_numel.default,
    aten.sym_stride.int,
    aten._assert_tensor_metadata.default,
    aten._assert_scalar.default,
    aten.sym_constrain_range_for_size.default,
}

GETITEM = operator.getitem
