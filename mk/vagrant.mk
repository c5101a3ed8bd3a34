# The Vagrant rehearsal (Vagrantfile, deploy/vagrant). See README.md, "Rehearse it".
.PHONY: box rehearse-vm

# The local libvirt box wxrelay/debian12, from Debian's packages, unless installed (root).
box:
	deploy/vagrant/build-box

# vagrant up, end-to-end checks, vagrant provision (changed=0), vagrant destroy (nothing left); root.
# WXRELAY_VM_ACCEL=tcg where KVM does not work.
rehearse-vm: venv deploy-tools
	$(PY) deploy/vagrant/rehearse_vm.py
