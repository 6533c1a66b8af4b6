# Stand-in values for the AWS API, which `terraform test` cannot reach here: only what the module
# reads from a data source or prints in an output. The mock invents the rest (ids, ARNs).

mock_data "aws_ec2_instance_type" {
  defaults = {
    supported_architectures = ["x86_64", "i386"]
  }
}

mock_data "aws_ami" {
  defaults = {
    id               = "ami-0123456789abcdef0"
    root_device_name = "/dev/xvda"
  }
}

mock_data "aws_vpc" {
  defaults = {
    id         = "vpc-0123456789abcdef0"
    cidr_block = "172.31.0.0/16"
  }
}

mock_data "aws_subnets" {
  defaults = {
    ids = ["subnet-0bbbbbbbbbbbbbbbb", "subnet-0aaaaaaaaaaaaaaaa", "subnet-0cccccccccccccccc"]
  }
}

mock_data "aws_subnet" {
  defaults = {
    vpc_id = "vpc-0fedcba9876543210"
  }
}

mock_data "aws_partition" {
  defaults = {
    partition  = "aws"
    dns_suffix = "amazonaws.com"
  }
}

mock_resource "aws_eip" {
  defaults = {
    public_ip = "198.51.100.7"
  }
}

mock_resource "aws_instance" {
  defaults = {
    id = "i-0123456789abcdef0"
  }
}

# The provider checks the ARNs and ids it is handed, so these must look real.
mock_resource "aws_lb" {
  defaults = {
    arn      = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/modelstack-alb/0123456789abcdef"
    dns_name = "modelstack-alb-123456789.us-east-1.elb.amazonaws.com"
  }
}

mock_resource "aws_lb_target_group" {
  defaults = {
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/modelstack-web/0123456789abcdef"
  }
}

mock_resource "aws_launch_template" {
  defaults = {
    id = "lt-0123456789abcdef0"
  }
}

mock_resource "aws_autoscaling_group" {
  defaults = {
    name = "modelstack-20250101000000000000000001"
  }
}

mock_resource "aws_iam_instance_profile" {
  defaults = {
    name = "modelstack-instance-20250101000000000000000002"
    arn  = "arn:aws:iam::123456789012:instance-profile/modelstack-instance-20250101000000000000000002"
  }
}
