"""The ``edgegw`` command and the field tools: the only part of the runtime that imports ``firmware_sim``
(for ``edgegw sim`` and ``edgegw demo``).

::

    commands.py    the command line: run, check, sim, demo, decode, buffer, schema, status
    status.py      edgegw status: the metrics of a running gateway, live or once
    buffertool.py  edgegw buffer inspect|export|purge, salvage of a damaged file included
    ble.py         edgegw ble record: a BLE capture for a ble device's replay
    decode.py      edgegw decode: a captured frame taken apart, for a technician or as JSON
    demo.py        edgegw demo: a simulated lane end to end
    console.py     the demo's upstream when no broker answers: events printed on the console
"""

from gateway.cli.commands import main

__all__ = ["main"]
