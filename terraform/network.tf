# Security groups. The public entry point (the VM in single mode, the load balancer in scaled mode)
# takes HTTP and HTTPS from allowed_cidrs; behind a load balancer the VMs take HTTP from it alone.
# SSH stays closed unless ssh_cidr names a range (never the whole internet: see variables.tf), and
# so do Grafana and Prometheus (monitoring = true) unless monitoring_cidr names one.

locals {
  # Scaled mode without a certificate has no HTTPS listener, so nothing to open 443 for.
  public_ports = merge({ http = 80 }, local.single || var.certificate_arn != null ? { https = 443 } : {})
  public_rules = {
    for pair in setproduct(keys(local.public_ports), var.allowed_cidrs) :
    "${pair[0]} from ${pair[1]}" => { name = pair[0], port = local.public_ports[pair[0]], cidr = pair[1] }
  }
  monitoring_ports = var.monitoring_cidr != null ? { grafana = 3000, prometheus = 9090 } : {}
  # What a VM reaches out to: Debian/Ubuntu mirrors and PyPI (80/443), the git host, Let's Encrypt,
  # the SSM endpoints and, with monitoring, Grafana's apt repository (443). DNS and NTP go to the VPC's own resolvers, which security groups don't filter.
  egress_ports = { http = 80, https = 443 }
}

resource "aws_security_group" "instance" {
  name_prefix = "${var.name}-instance-"
  description = "modelstack VMs"
  vpc_id      = data.aws_vpc.selected.id
  tags        = { Name = "${var.name}-instance" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "alb" {
  count = local.scaled ? 1 : 0

  name_prefix = "${var.name}-alb-"
  description = "modelstack load balancer"
  vpc_id      = data.aws_vpc.selected.id
  tags        = { Name = "${var.name}-alb" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "public" {
  #checkov:skip=CKV_AWS_260:A public web service: HTTP from anywhere is the point (allowed_cidrs narrows it).
  for_each = local.public_rules

  security_group_id = local.single ? aws_security_group.instance.id : aws_security_group.alb[0].id
  description       = "${upper(each.value.name)} from ${each.value.cidr} (public service)"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_ingress_rule" "from_alb" {
  #checkov:skip=CKV_AWS_260:False positive: checkov does not know referenced_security_group_id; the only source is the load balancer's security group.
  count = local.scaled ? 1 : 0

  security_group_id            = aws_security_group.instance.id
  description                  = "HTTP from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.alb[0].id
}

resource "aws_vpc_security_group_egress_rule" "alb_to_instances" {
  count = local.scaled ? 1 : 0

  security_group_id            = aws_security_group.alb[0].id
  description                  = "HTTP to the modelstack VMs"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.instance.id
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  count = var.ssh_cidr != null ? 1 : 0

  security_group_id = aws_security_group.instance.id
  description       = "SSH from ssh_cidr"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = strcontains(var.ssh_cidr, ":") ? null : var.ssh_cidr
  cidr_ipv6         = strcontains(var.ssh_cidr, ":") ? var.ssh_cidr : null
}

resource "aws_vpc_security_group_ingress_rule" "monitoring" {
  for_each = local.monitoring_ports

  security_group_id = aws_security_group.instance.id
  description       = "${title(each.key)} from monitoring_cidr"
  ip_protocol       = "tcp"
  from_port         = each.value
  to_port           = each.value
  cidr_ipv4         = var.monitoring_cidr
}

resource "aws_vpc_security_group_egress_rule" "instance" {
  for_each = local.egress_ports

  security_group_id = aws_security_group.instance.id
  description       = "${upper(each.key)} out: packages, git, certificates, SSM"
  ip_protocol       = "tcp"
  from_port         = each.value
  to_port           = each.value
  cidr_ipv4         = "0.0.0.0/0"
}
