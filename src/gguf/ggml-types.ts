// Block layouts of the ggml tensor types thinktune reads and writes (ggml.c type_traits).
import { GgmlType, type GgmlTypeName } from "../native/addon.js";

export interface GgmlTypeLayout {
  name: GgmlTypeName;
  id: number;
  /** elements per block */
  blockSize: number;
  /** bytes per block */
  blockBytes: number;
}

export const ggmlTypeLayouts: Record<GgmlTypeName, GgmlTypeLayout> = {
  F32: { name: "F32", id: GgmlType.F32, blockSize: 1, blockBytes: 4 },
  F16: { name: "F16", id: GgmlType.F16, blockSize: 1, blockBytes: 2 },
  BF16: { name: "BF16", id: GgmlType.BF16, blockSize: 1, blockBytes: 2 },
  Q8_0: { name: "Q8_0", id: GgmlType.Q8_0, blockSize: 32, blockBytes: 34 },
  Q4_0: { name: "Q4_0", id: GgmlType.Q4_0, blockSize: 32, blockBytes: 18 },
  Q4_K: { name: "Q4_K", id: GgmlType.Q4_K, blockSize: 256, blockBytes: 144 },
  Q5_K: { name: "Q5_K", id: GgmlType.Q5_K, blockSize: 256, blockBytes: 176 },
  Q6_K: { name: "Q6_K", id: GgmlType.Q6_K, blockSize: 256, blockBytes: 210 },
};

export const ggmlTypeNames = Object.keys(ggmlTypeLayouts) as GgmlTypeName[];

const layoutsById = new Map<number, GgmlTypeLayout>(Object.values(ggmlTypeLayouts).map((layout) => [layout.id, layout]));

/** The layout of a type id, or undefined for types thinktune does not handle. */
export function ggmlTypeLayoutById(id: number): GgmlTypeLayout | undefined {
  return layoutsById.get(id);
}

/** The name of a ggml type id ("Q4_K"), or "type N" for ids thinktune does not know. */
export function ggmlTypeLabel(id: number): string {
  return layoutsById.get(id)?.name ?? `type ${id}`;
}

export function isGgmlTypeName(name: string): name is GgmlTypeName {
  return Object.hasOwn(ggmlTypeLayouts, name);
}

/**
 * Bytes a tensor of this type and shape takes (dims in ggml order, dims[0] contiguous).
 * Throws when dims[0] is not a whole number of blocks, as ggml requires.
 */
export function ggmlTensorBytes(type: GgmlTypeName, dims: readonly number[], tensorName = "tensor"): number {
  const layout = ggmlTypeLayouts[type];
  const rowLength = dims[0] ?? 1;
  if (rowLength % layout.blockSize !== 0) {
    throw new RangeError(
      `${tensorName}: a ${type} tensor needs its first dimension to be a multiple of ${layout.blockSize}, got ${rowLength} (dims [${dims.join(", ")}])`,
    );
  }
  let rows = 1;
  for (let i = 1; i < dims.length; i++) rows *= dims[i];
  return (rowLength / layout.blockSize) * layout.blockBytes * rows;
}
