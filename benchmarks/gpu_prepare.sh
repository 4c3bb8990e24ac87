#!/usr/bin/env bash
# Prepare what benchmarks/gpu_full_check.sh needs on a GPU machine without network whose
# python3 (3.12) already holds a CUDA torch: fedrec's other pinned dependencies as cp312
# wheels in .whl/, and SmolLM2's config and tokenizer in .gpu/smollm2-arch/ (the weights
# stay here: benchmarks/shape_twin.py rebuilds the architecture there). Both folders are
# git-ignored through .git/info/exclude; together about 49 MB.
#   bash benchmarks/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
for path in /.whl/ /.gpu/; do
    grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >>.git/info/exclude
done
platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]/#/--platform=}" -d .whl \
    flwr==1.41.0 flwr-datasets==0.6.1 opacus==1.6.0 transformers==5.23.0 peft==0.21.2 recbole==1.2.1 \
    datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 \
    pycryptodome==3.24.1 iterators==0.0.2 tomli==2.5.0 tomli-w==1.2.0 typer==0.20.1 grpcio==1.85.3 \
    grpcio-health-checking==1.81.1 protobuf==6.33.6 prompt-toolkit==3.0.53 wcwidth==0.9.4 sqlalchemy==2.1.9 \
    greenlet==3.5.6 alembic==1.20.1 mako==1.4.3 uvicorn==0.49.0 fastapi==0.138.2 starlette==1.3.1 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 httptools==0.9.0 watchfiles==1.3.0 websockets==17.4 python-dotenv==1.2.4 \
    anyio==4.16.0 click==8.5.1 rich==14.3.4 shellingham==1.5.4 pathspec==1.1.1 packaging==25.0 filelock==4.3.1
model=$(.venv/bin/python -c "from fedrec.models.backbone import bundled_smollm2_dir; print(bundled_smollm2_dir())")
mkdir -p .gpu/smollm2-arch
cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/smollm2-arch/
du -sh .whl .gpu
