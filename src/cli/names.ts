// Type and format names as every command takes them: in any case, as llama.cpp's tools do
// (q4_k_m, Q4_K_M), turned into the one spelling the library uses (types upper case, formats lower).
import { InvalidArgumentError } from "commander";

/** A commander argument parser that accepts `names` in any case and returns the canonical spelling. */
export function nameArgument<T extends string>(names: readonly T[]): (value: string) => T {
  return (value: string): T => {
    const found = names.find((name) => name.toLowerCase() === value.trim().toLowerCase());
    if (found === undefined) throw new InvalidArgumentError(`use one of ${names.join(", ")} (any case), got "${value}"`);
    return found;
  };
}
