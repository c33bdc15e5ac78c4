// Positions and revisions are uint64 on the wire. The client returns them as `bigint` and accepts
// a bigint, a safe non-negative integer `number`, or a decimal string.

/**
 * A uint64 as the client accepts it. Strings must be decimal digits, which the type checks at
 * compile time for literals (`"12"` compiles, `"nostream"` does not).
 */
export type Uint64Input = bigint | number | `${bigint}`;

/** 18446744073709551615: "from the end" for backwards reads. */
export const U64_MAX = (1n << 64n) - 1n;

/** Checks and converts a uint64 given as a bigint, a number or a decimal string. */
export function toUint64(value: Uint64Input, name: string): bigint {
  let result: bigint;
  if (typeof value === "bigint") {
    result = value;
  } else if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new RangeError(`${name} must be a safe integer, a bigint or a decimal string, got ${value}`);
    }
    result = BigInt(value);
  } else if (typeof value === "string" && /^[0-9]+$/.test(value)) {
    result = BigInt(value);
  } else {
    throw new TypeError(`${name} must be a bigint, a number or a decimal string, got ${String(value)}`);
  }
  if (result < 0n || result > U64_MAX) {
    throw new RangeError(`${name} must be between 0 and ${U64_MAX}, got ${result}`);
  }
  return result;
}
