"""SIMD vectors in compiled kernels: a numba type for LLVM's ``<L × dtype>`` and its operations.

numba vectorises a loop only when LLVM can prove it safe.  The sparse × dense row kernel
(:func:`efficientdl.kernels.cpu._rows_mm_range`), written as a loop over the right-hand sides,
read eight rows of ``X`` and added into a row of ``Y``: nine arrays that might overlap, more
than LLVM's vectoriser checks at run time, so that loop stayed scalar (read off the compiled
code: scalar ``vfmadd…ss`` only).  These intrinsics state the vector operations outright, as
XNNPACK's sparse micro-kernels do with SIMD intrinsics: a run of ``L`` consecutive elements
of a row is one vector register (``L = 16`` float32: one AVX-512 register or two AVX2 ones;
LLVM splits a vector wider than the machine's), kept in registers across all the stored
weights of an output row.

Operations (``L`` is a compile-time constant, an integer literal at the call):

* :func:`vector_zeros` ``(like, L)``: ``L`` zeros of ``like``'s dtype;
* :func:`vector_load` ``(a, i, j, L)``: ``a[i, j : j + L]`` of a 2-D array whose rows are
  contiguous (``a.strides[1] == a.itemsize``; the caller checks), no bounds check;
* :func:`vector_store` ``(a, i, j, v)``: ``a[i, j : j + L] = v``;
* :func:`vector_load_flat` ``(a, i, L)`` and :func:`vector_store_flat` ``(a, i, v)``: the same on
  a 1-D array, ``a[i : i + L]`` (contiguous; the caller checks);
* :func:`vector_fma` ``(acc, w, v)``: ``acc + w · v`` for a scalar ``w`` (float: one fused
  multiply-add, ``llvm.fma``; integer: wrapping multiply and add, as C's int32 arithmetic);
* :func:`vector_scale` ``(w, v)``: ``w · v``;
* :func:`vector_add` ``(a, b)``: ``a + b``.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, models, register_model


class Vector(types.Type):
    """The numba type of ``lanes`` values of ``dtype`` held as one LLVM vector."""

    def __init__(self, dtype: types.Type, lanes: int) -> None:
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"vector({dtype} x {lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _lanes(lanes) -> int:
    if not isinstance(lanes, types.IntegerLiteral) or lanes.literal_value < 1:
        raise TypingError(f"the vector width must be a positive integer literal, got {lanes}")
    return lanes.literal_value


def _check_matrix(array) -> None:
    if not isinstance(array, types.Array) or array.ndim != 2 or not isinstance(array.dtype, (types.Float, types.Integer)):
        raise TypingError(f"vectors are read from and written to 2-D numeric arrays, got {array}")


def _check_vector(array) -> None:
    if not isinstance(array, types.Array) or array.ndim != 1 or not isinstance(array.dtype, (types.Float, types.Integer)):
        raise TypingError(f"flat vectors are read from and written to 1-D numeric arrays, got {array}")


def _address(context, builder, array_type, array, indices, index_types, vector_type):
    """The pointer to ``array[indices]``, typed as a pointer to ``vector_type``."""
    view = context.make_array(array_type)(context, builder, array)
    index = [context.cast(builder, i, t, types.intp) for i, t in zip(indices, index_types)]
    element = cgutils.get_item_pointer(context, builder, array_type, view, index, wraparound=False)
    return builder.bitcast(element, context.get_value_type(vector_type).as_pointer())


def _alignment(context, dtype) -> int:
    return context.get_abi_sizeof(context.get_value_type(dtype))


@intrinsic
def vector_zeros(typingctx, like, lanes):
    """``lanes`` zeros of the dtype of the array ``like``."""
    vector_type = Vector(like.dtype, _lanes(lanes))

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(vector_type), None)
    return vector_type(like, lanes), codegen


def _load(vector_type: Vector, indices: int):
    """The codegen of a vector load at ``array[args[1 : 1 + indices]]``."""
    def codegen(context, builder, signature, args):
        end = 1 + indices
        pointer = _address(context, builder, signature.args[0], args[0], args[1:end], signature.args[1:end],
                           vector_type)
        return builder.load(pointer, align=_alignment(context, vector_type.dtype))
    return codegen


def _store(array, value, indices: int):
    """The codegen of a vector store of the last argument at ``array[args[1 : 1 + indices]]``."""
    if not isinstance(value, Vector) or value.dtype != array.dtype:
        raise TypingError(f"a vector of {array.dtype} is stored into {array}, got {value}")

    def codegen(context, builder, signature, args):
        end = 1 + indices
        pointer = _address(context, builder, signature.args[0], args[0], args[1:end], signature.args[1:end], value)
        builder.store(args[end], pointer, align=_alignment(context, array.dtype))
        return context.get_dummy_value()
    return codegen


@intrinsic
def vector_load(typingctx, array, i, j, lanes):
    """``array[i, j : j + lanes]`` as a vector (rows contiguous; not bounds-checked)."""
    _check_matrix(array)
    vector_type = Vector(array.dtype, _lanes(lanes))
    return vector_type(array, i, j, lanes), _load(vector_type, 2)


@intrinsic
def vector_store(typingctx, array, i, j, value):
    """``array[i, j : j + L] = value`` (rows contiguous; not bounds-checked)."""
    _check_matrix(array)
    return types.void(array, i, j, value), _store(array, value, 2)


@intrinsic
def vector_load_flat(typingctx, array, i, lanes):
    """``array[i : i + lanes]`` of a 1-D array as a vector (contiguous; not bounds-checked)."""
    _check_vector(array)
    vector_type = Vector(array.dtype, _lanes(lanes))
    return vector_type(array, i, lanes), _load(vector_type, 1)


@intrinsic
def vector_store_flat(typingctx, array, i, value):
    """``array[i : i + L] = value`` on a 1-D array (contiguous; not bounds-checked)."""
    _check_vector(array)
    return types.void(array, i, value), _store(array, value, 1)


def _splat(context, builder, scalar, scalar_type, vector_type):
    llvm_type = context.get_value_type(vector_type)
    value = context.cast(builder, scalar, scalar_type, vector_type.dtype)
    one = builder.insert_element(ir.Constant(llvm_type, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.lanes), None)
    return builder.shuffle_vector(one, ir.Constant(llvm_type, ir.Undefined), zeros)


@intrinsic
def vector_fma(typingctx, acc, w, v):
    """``acc + w · v`` (``w`` a scalar, cast to the vectors' dtype)."""
    if not isinstance(acc, Vector) or acc != v or not isinstance(w, (types.Float, types.Integer)):
        raise TypingError(f"vector_fma takes (vector, scalar, vector of the same type), got {acc}, {w}, {v}")

    def codegen(context, builder, signature, args):
        llvm_type = context.get_value_type(acc)
        weight = _splat(context, builder, args[1], signature.args[1], acc)
        if isinstance(acc.dtype, types.Float):
            name = f"llvm.fma.v{acc.lanes}f{acc.dtype.bitwidth}"
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(llvm_type, [llvm_type] * 3), name)
            return builder.call(fma, [weight, args[2], args[0]])
        return builder.add(args[0], builder.mul(weight, args[2]))
    return acc(acc, w, v), codegen


@intrinsic
def vector_scale(typingctx, w, v):
    """``w · v`` (``w`` a scalar, cast to the vector's dtype)."""
    if not isinstance(v, Vector) or not isinstance(w, (types.Float, types.Integer)):
        raise TypingError(f"vector_scale takes (scalar, vector), got {w}, {v}")

    def codegen(context, builder, signature, args):
        weight = _splat(context, builder, args[0], signature.args[0], v)
        if isinstance(v.dtype, types.Float):
            return builder.fmul(weight, args[1])
        return builder.mul(weight, args[1])
    return v(w, v), codegen


@intrinsic
def vector_add(typingctx, a, b):
    """``a + b`` element by element."""
    if not isinstance(a, Vector) or a != b:
        raise TypingError(f"vector_add takes two vectors of the same type, got {a}, {b}")

    def codegen(context, builder, signature, args):
        if isinstance(a.dtype, types.Float):
            return builder.fadd(args[0], args[1])
        return builder.add(args[0], args[1])
    return a(a, b), codegen


__all__ = ["Vector", "vector_zeros", "vector_load", "vector_store", "vector_load_flat", "vector_store_flat",
           "vector_fma", "vector_scale", "vector_add"]
