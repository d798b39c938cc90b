from mlrb.bench.cli import main

raise SystemExit(main())
