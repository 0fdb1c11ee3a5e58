"""Inside the VM (tests/image/test_in_vm.py starts it): the exported image on Debian's kernel.
The lab's namespaces and servers come from tests/vm/lab.py."""
