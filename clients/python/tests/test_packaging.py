"""The package installs with plain pip: generated code and the py.typed marker included."""

import pathlib
import subprocess
import sys
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = HERE.parent


def test_a_built_wheel_holds_the_generated_code_and_py_typed_and_imports(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path / "wheels"), str(PACKAGE)],
        check=True,
    )
    (wheel,) = (tmp_path / "wheels").glob("highwater_client-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "highwater_client/py.typed" in names
    assert "highwater_client/_proto/highwater/v1/event_store_pb2.py" in names
    assert "highwater_client/_proto/highwater/v1/event_store_pb2.pyi" in names

    # Installed alone (its dependencies come from this environment), away from the source tree.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
    )
    imported = subprocess.run(
        [sys.executable, "-c", "import highwater_client, sys; print(highwater_client.__file__); "
         "print(highwater_client.event_store_pb2.SaveSnapshotRequest.DESCRIPTOR.full_name)"],
        cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True, check=True,
    )
    location, message = imported.stdout.split()
    assert location.startswith(str(target))
    assert message == "highwater.v1.SaveSnapshotRequest"
