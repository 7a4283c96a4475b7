set -x -o pipefail; export PYTHONUNBUFFERED=1; T0=$(date +%s)
pip_() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }; pip_ /tmp/site .whl/*.whl || exit 1
T1=$(date +%s); bash .vb/install.sh install || exit 2; T2=$(date +%s)
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
echo "TIME wheels $((T1-T0))s vllm $((T2-T1))s"
ls /tmp/site | grep dist-info > $OUT/site.txt; echo DUPS: $(sed 's/-[0-9].*//' $OUT/site.txt | sort | uniq -d)
nvidia-smi; uname -r
python3 -c 'import sys,torch,vllm,optuna,pynvml,pydantic,openai,fastapi,transformers;print(sys.version,torch.__version__,torch.version.cuda,vllm.__version__,optuna.__version__,pydantic.__version__,openai.__version__,fastapi.__version__,transformers.__version__,pynvml.__file__)' || exit 3
python3 -m autotune.models.shapes llama-3.1-8b /tmp/m || exit 4
V="python3 -m vllm.entrypoints.cli.main"; S=$(date +%s)
setsid $V serve /tmp/m --load-format dummy --host 127.0.0.1 --port 8000 --max-model-len 4096 > $OUT/server.log 2>&1 & P=$!
G(){ python3 -c "import urllib.request as u,sys;sys.stdout.buffer.write(u.urlopen('http://127.0.0.1:8000/$1',timeout=5).read())"; }
for i in $(seq 280); do G health >/dev/null 2>&1 && break; kill -0 $P || break; sleep 1; done
echo "TIME healthy $(( $(date +%s)-S ))s"; G health || { tail -40 $OUT/server.log; exit 5; }
G metrics > $OUT/metrics0.txt
B=$(date +%s); timeout 240 $V bench serve --backend vllm --model /tmp/m --dataset-name random --random-input-len 1024 --random-output-len 256 --num-prompts 200 --max-concurrency 32 --ignore-eos --port 8000 --save-result --result-dir $OUT 2>&1 | tee $OUT/bench.log | tail -40 || $V bench serve --help > $OUT/bench_help.txt 2>&1
echo "TIME bench $(( $(date +%s)-B ))s"
G metrics > $OUT/metrics.txt; echo NAMES: $(grep -o '^vllm:[a-z_:0-9]*' $OUT/metrics.txt | sed -E 's/_(bucket|sum|count|total|created)$//' | sort -u)
kill -- -$P; sleep 3; ls -la $OUT
