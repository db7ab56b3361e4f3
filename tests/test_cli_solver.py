

def test_the_commands_import_mxnet_only_when_they_run(tmp_path):
    """The CLI modules load without mxnet (the thread count must be set before it loads)."""
    probe = ("import sys\nfrom caffedata.cli import build_parser, train, test, time\n"
             "parser = build_parser()\n"
             "for verb in ('train', 'test', 'time'):\n"
             "    try:\n        parser.parse_args([verb, '--help'])\n    except SystemExit:\n        pass\n"
             "print('mxnet imported:', 'mxnet' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    assert "--log-json" in r.stdout and "--iterations" in r.stdout
    assert r.stdout.strip().endswith("mxnet imported: False")


def test_configure_threads_rules():
    from caffedata.cli import CommandError
    from caffedata.cli.runtime import configure_threads, stages_from, usable_cores

    if "mxnet" in sys.modules:  # this process may have imported mxnet: the rule is checked in a child
        code = ("from caffedata.cli.runtime import configure_threads as c\n"
                "e = {}; print(c(None, e), e)\n"
                "e = {'OMP_NUM_THREADS': '3'}; print(c(None, e), e)\n"
                "e = {'MXNET_OMP_MAX_THREADS': '5'}; print(c(4, e), e)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=REPO))
        out = r.stdout.splitlines()
        assert r.returncode == 0, r.stderr
    else:
        out = []
        for threads, env in ((None, {}), (None, {"OMP_NUM_THREADS": "3"}), (4, {"MXNET_OMP_MAX_THREADS": "5"})):
            out.append(f"{configure_threads(threads, env)} {env}")
    cores = usable_cores()
    assert out[0].startswith(f"Using {cores} OpenMP threads (all usable cores") and f"'{cores}'" in out[0]
    assert out[1].startswith("Using 3 OpenMP threads (OMP_NUM_THREADS set") and "{'OMP_NUM_THREADS': '3'}" in out[1]
    assert out[2].startswith("Using 4 OpenMP threads (--threads)")
    assert "'MXNET_OMP_MAX_THREADS': '4'" in out[2] and "'OMP_NUM_THREADS': '4'" in out[2]
    with pytest.raises(CommandError, match="--threads: must be >= 1"):
        configure_threads(0, {})
    assert stages_from([]) == ("",) and stages_from(["a,b", "c"]) == ("a", "b", "c")
