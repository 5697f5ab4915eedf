#!/bin/sh
# TEST STAND-IN for nvidia-smi (tests/lab/test_gpu_health.py, benchmarks/health.py): no GPUs here. It answers the
# queries the appliance makes: preflight's (-L), appliance top's, the remapped-rows query, and the agent's and
# QA check's;
# a GPU reset (-r) is recorded in the journal (tag nvidia-smi-reset: the agent that asks for it runs sandboxed,
# on a read-only file system) and succeeds.
case "$*" in
  "-r"|"-r -i "*)
    logger -t nvidia-smi-reset -- "$*"; echo "GPU 00000000:1A:00.0 was successfully reset." ;;
  "-L") echo "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5f6c1b2a-3d4e-4f50-8a9b-0c1d2e3f4a5b)" ;;
  *utilization.gpu*)
    echo "0, GPU-5f6c1b2a-3d4e-4f50-8a9b-0c1d2e3f4a5b, NVIDIA A100-SXM4-80GB, 535.104.05, 37, 20480, 81920" ;;
  *--query-remapped-rows*) echo "00000000:4E:00.0, No, No" ;;
  *) echo "0, 00000000:4E:00.0, GPU-5f6c1b2a-3d4e-4f50-8a9b-0c1d2e3f4a5b, 0, [N/A], 0x0000000000000001" ;;
esac
