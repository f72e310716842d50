// Public API of torch-dpo.
export { runtimeInfo, setThreads, tokenLogprobs, matmulBenchmark } from './runtime';
export type { RuntimeInfo } from './runtime';
export { ValidationError } from './validate';
export type { Device, DType } from './validate';
