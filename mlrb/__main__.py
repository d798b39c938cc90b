from mlrb.cli import main

raise SystemExit(main())
