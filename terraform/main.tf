# modelstack on AWS: one VM behind an Elastic IP ("single"), or an Application Load Balancer in front
# of an Auto Scaling Group ("scaled"). Both boot the same cloud-init, which installs the stack from git
# with deploy/install.sh, the same script and systemd units as a bare-metal install.

locals {
  single = var.mode == "single"
  scaled = var.mode == "scaled"

  tags = merge({ Application = "modelstack", Stack = var.name, ManagedBy = "terraform" }, var.tags)

  # Official images only: Debian's own account, Canonical's for Ubuntu. %s is the architecture.
  images = {
    "debian-12"    = { owner = "136693071363", name = "debian-12-%s-*" }
    "ubuntu-24.04" = { owner = "099720109477", name = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-%s-server-*" }
    "ubuntu-22.04" = { owner = "099720109477", name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-%s-server-*" }
  }
  architecture = contains(data.aws_ec2_instance_type.selected.supported_architectures, "x86_64") ? "x86_64" : "arm64"

  subnet_ids = length(var.subnet_ids) > 0 ? var.subnet_ids : sort(data.aws_subnets.default[0].ids)

  install_dir = "/opt/modelstack"
  install_env = merge(
    var.install_env,
    # Single mode: the VM answers the public name itself, so certbot runs there.
    local.single && var.domain != null ? { DOMAIN = var.domain, EMAIL = var.email } : {},
    # Scaled mode: requests arrive from load balancer nodes inside the VPC; trust their X-Forwarded-For.
    # API keys off: each instance would generate its own key, so a client's key would work only on
    # the instance that made it (the single VM keeps the key install.sh generates).
    local.scaled ? { TRUSTED_PROXIES = data.aws_vpc.selected.cidr_block, API_KEYS = "off" } : {},
    # The same range the security group opens (network.tf): the VM then binds Prometheus and Grafana beyond loopback.
    var.monitoring ? { MONITORING = "1" } : {},
    var.monitoring_cidr != null ? { MONITORING_CIDR = var.monitoring_cidr } : {},
  )
  # The SSM agent from AWS's bucket in the deployment's own region, for images that lack it.
  ssm_agent_url = var.os == "debian-12" ? format(
    "https://s3.%s.%s/amazon-ssm-%s/latest/debian_%s/amazon-ssm-agent.deb",
    var.region, data.aws_partition.current.dns_suffix, var.region, local.architecture == "x86_64" ? "amd64" : "arm64",
  ) : null

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    repo_url      = var.repo_url
    git_ref       = var.git_ref
    install_dir   = local.install_dir
    install_env   = local.install_env
    ssm_agent_url = local.ssm_agent_url
  })
}

data "aws_partition" "current" {}

data "aws_ec2_instance_type" "selected" {
  instance_type = var.instance_type
}

data "aws_ami" "selected" {
  most_recent = true
  owners      = [local.images[var.os].owner]

  filter {
    name   = "name"
    values = [format(local.images[var.os].name, local.architecture == "x86_64" ? "amd64" : "arm64")]
  }
  filter {
    name   = "architecture"
    values = [local.architecture]
  }
  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
  filter {
    name   = "root-device-type"
    values = ["ebs"]
  }
}

# Without subnet_ids: the default VPC, in the zones where instance_type exists (not every zone has
# every type, and a launch there fails only at apply time).
data "aws_ec2_instance_type_offerings" "zones" {
  location_type = "availability-zone"

  filter {
    name   = "instance-type"
    values = [var.instance_type]
  }
}

data "aws_subnets" "default" {
  count = length(var.subnet_ids) == 0 ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.selected.id]
  }
  filter {
    name   = "availability-zone"
    values = data.aws_ec2_instance_type_offerings.zones.locations
  }
  filter {
    name   = "default-for-az"
    values = ["true"]
  }

  lifecycle {
    postcondition {
      condition     = length(self.ids) >= (local.scaled ? 2 : 1)
      error_message = "The default VPC has too few subnets in zones that offer ${var.instance_type} (a load balancer needs two zones): pick another instance_type or region, or give subnet_ids."
    }
  }
}

data "aws_subnet" "given" {
  count = length(var.subnet_ids) > 0 ? 1 : 0
  id    = var.subnet_ids[0]
}

data "aws_vpc" "selected" {
  id      = length(var.subnet_ids) > 0 ? data.aws_subnet.given[0].vpc_id : null
  default = length(var.subnet_ids) > 0 ? null : true
}
