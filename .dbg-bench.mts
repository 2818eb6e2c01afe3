import { benchModel, cpuBenchShape } from "./src/bench/run.ts";
import { llamaCppPromptEvaluation } from "./src/bench/peers.ts";
const t0 = Date.now();
const { path } = await benchModel({ ...cpuBenchShape, type: "Q8_0" }, console.log);
console.log("model", path, (Date.now() - t0) / 1000);
const tokens = Array.from({ length: 512 }, (_, i) => (i * 7919 + 3) % 32000) as any;
console.log(await llamaCppPromptEvaluation(path, tokens, 2, 2));
