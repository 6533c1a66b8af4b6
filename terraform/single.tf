# mode = "single": one VM with a fixed public address.

resource "aws_instance" "web" {
  count = local.single ? 1 : 0

  ami                         = data.aws_ami.selected.id
  instance_type               = var.instance_type
  iam_instance_profile        = aws_iam_instance_profile.instance.name
  key_name                    = var.ssh_key_name
  user_data                   = local.user_data
  user_data_replace_on_change = true # a new git_ref or setting means a fresh VM, as in scaled mode
  ebs_optimized               = true
  monitoring                  = true

  network_interface {
    network_interface_id = aws_network_interface.web[0].id
    device_index         = 0
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    delete_on_termination = true
  }

  tags = { Name = var.name }

  # The address is attached before the VM boots: cloud-init's downloads never see it change.
  depends_on = [aws_eip.web]

  lifecycle {
    # A new image release must not replace a serving VM on an unrelated apply;
    # take it on purpose with `terraform apply -replace='aws_instance.web[0]'`.
    ignore_changes = [ami]
  }
}

# The VM's network interface and address exist before the VM, and outlive it when a new git_ref
# replaces it. `terraform apply -target=aws_eip.web` creates just these two, to put the address in
# DNS before the VM boots and certbot asks Let's Encrypt to reach the domain.
resource "aws_network_interface" "web" {
  count = local.single ? 1 : 0

  description     = "modelstack VM"
  subnet_id       = local.subnet_ids[0]
  security_groups = [aws_security_group.instance.id]
  tags            = { Name = var.name }
}

resource "aws_eip" "web" {
  count = local.single ? 1 : 0

  domain            = "vpc"
  network_interface = aws_network_interface.web[0].id
  tags              = { Name = var.name }
}
