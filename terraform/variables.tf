# Everything has a production default except repo_url: set it (terraform.tfvars or TF_VAR_repo_url).

variable "region" {
  description = "AWS region to deploy into, e.g. eu-central-1."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1 or eu-central-1."
  }
}

variable "name" {
  description = "Name prefix for every resource (load balancer and target group names derive from it)."
  type        = string
  default     = "modelstack"

  validation {
    # Target group names are limited to 32 characters and the longest suffix added here is "-web".
    condition     = can(regex("^[a-z][a-z0-9-]{0,26}[a-z0-9]$", var.name))
    error_message = "name must be 2-28 characters of lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "mode" {
  description = "\"single\": one VM with an Elastic IP. \"scaled\": an Application Load Balancer in front of an Auto Scaling Group."
  type        = string
  default     = "single"

  validation {
    condition     = contains(["single", "scaled"], var.mode)
    error_message = "mode must be \"single\" or \"scaled\"."
  }
}

variable "os" {
  description = "Operating system image: debian-12 (official Debian AMI), ubuntu-24.04 or ubuntu-22.04 (Canonical AMIs)."
  type        = string
  default     = "debian-12"

  validation {
    condition     = contains(["debian-12", "ubuntu-24.04", "ubuntu-22.04"], var.os)
    error_message = "os must be one of debian-12, ubuntu-24.04, ubuntu-22.04."
  }
}

variable "instance_type" {
  description = "EC2 instance type. Graviton types (t4g, c7g, ...) get an arm64 image automatically. Keep workers x threads <= vCPUs."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like t3.small or c7g.large."
  }
}

variable "root_volume_size" {
  description = "Size of the encrypted gp3 root volume in GiB (OS, Python environment, models, logs)."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size >= 10 && var.root_volume_size <= 1024 && floor(var.root_volume_size) == var.root_volume_size
    error_message = "root_volume_size must be a whole number of GiB between 10 and 1024."
  }
}

variable "subnet_ids" {
  description = "Subnets (all in one VPC) for the VM(s) and the load balancer; they must give instances a way out (public IP or NAT), and the load balancer needs one per zone. Empty: the default VPC's subnets in the zones that offer instance_type."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "subnet_ids must look like subnet-0123456789abcdef0."
  }

  validation {
    condition     = var.mode != "scaled" || length(var.subnet_ids) != 1
    error_message = "An Application Load Balancer needs subnets in at least two availability zones: give two or more subnet_ids."
  }
}

variable "allowed_cidrs" {
  description = "IPv4 ranges that may reach HTTP (80) and HTTPS (443). The default is the whole internet: it is a public service."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for cidr in var.allowed_cidrs : can(cidrnetmask(cidr))])
    error_message = "allowed_cidrs must be a non-empty list of IPv4 CIDR blocks such as 203.0.113.0/24."
  }
}

variable "ssh_cidr" {
  description = "One IPv4 or IPv6 range allowed to reach SSH (22), e.g. your office's /32. null (the default) keeps SSH closed; use SSM Session Manager instead."
  type        = string
  default     = null

  validation {
    condition     = var.ssh_cidr == null || can(cidrhost(var.ssh_cidr, 0))
    error_message = "ssh_cidr must be a CIDR block such as 203.0.113.7/32."
  }

  validation {
    # Rejects 0.0.0.0/0 and ::/0, and any other spelling of "everyone" such as 10.0.0.0/0.
    condition     = var.ssh_cidr == null || try(tonumber(split("/", var.ssh_cidr)[1]) > 0, false)
    error_message = "ssh_cidr must not open SSH to the whole internet (0.0.0.0/0 or ::/0): give your own address range, or leave it null and connect through SSM."
  }
}

variable "ssh_key_name" {
  description = "Name of an existing EC2 key pair for SSH (together with ssh_cidr). null: no key pair."
  type        = string
  default     = null

  validation {
    condition     = var.ssh_key_name == null || var.ssh_cidr != null
    error_message = "ssh_key_name needs ssh_cidr: SSH stays closed without it."
  }
}

variable "monitoring" {
  description = "Also install Prometheus, the node and nginx exporters and Grafana on each VM (deploy/install.sh MONITORING=1). They listen on 127.0.0.1: reach them with the monitoring_tunnel output (SSM port forwarding), or open monitoring_cidr."
  type        = bool
  default     = false
}

variable "monitoring_cidr" {
  description = "One IPv4 range allowed to reach Grafana (3000) and Prometheus (9090) directly, which then listen on all addresses of the VM (this security group rule is their only guard). null (the default) keeps them closed: use the monitoring_tunnel output."
  type        = string
  default     = null

  validation {
    condition     = var.monitoring_cidr == null || can(cidrnetmask(var.monitoring_cidr))
    error_message = "monitoring_cidr must be an IPv4 CIDR block such as 203.0.113.7/32."
  }

  validation {
    # Rejects 0.0.0.0/0 and any other spelling of "everyone" such as 10.0.0.0/0.
    condition     = var.monitoring_cidr == null || try(tonumber(split("/", var.monitoring_cidr)[1]) > 0, false)
    error_message = "monitoring_cidr must not open Prometheus and Grafana to the whole internet (0.0.0.0/0): give your own address range, or leave it null and use the monitoring_tunnel output."
  }

  validation {
    condition     = var.monitoring_cidr == null || var.monitoring
    error_message = "monitoring_cidr needs monitoring = true."
  }
}

variable "repo_url" {
  description = "HTTPS git URL of the modelstack repository the VMs clone and install (readable without credentials: user data is not a secret store)."
  type        = string

  validation {
    condition     = can(regex("^https://[^[:space:]]+$", var.repo_url))
    error_message = "repo_url must be an https:// git URL (the VM clones it without SSH keys)."
  }
}

variable "git_ref" {
  description = "Branch, tag or commit of repo_url to install."
  type        = string
  default     = "main"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._/-]*$", var.git_ref))
    error_message = "git_ref must be a branch, tag or commit name (letters, digits, . _ / -)."
  }
}

variable "domain" {
  description = "DNS name the service answers on. single mode: with email, the VM obtains a Let's Encrypt certificate (point the name at the elastic_ip output first). scaled mode: the name certificate_arn covers, pointed at alb_dns_name."
  type        = string
  default     = null

  validation {
    condition     = var.domain == null || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain))
    error_message = "domain must be a lower-case DNS name such as models.example.com."
  }
}

variable "email" {
  description = "Contact e-mail for Let's Encrypt (single mode, together with domain)."
  type        = string
  default     = null

  validation {
    condition     = var.email == null || can(regex("^[^@[:space:]'\"]+@[^@[:space:]'\"]+\\.[a-z]{2,}$", var.email))
    error_message = "email must be an e-mail address."
  }

  validation {
    condition     = var.mode != "single" || (var.domain == null) == (var.email == null)
    error_message = "In single mode domain and email go together: both turn on TLS via certbot, neither serves plain HTTP."
  }

  validation {
    condition     = var.mode != "scaled" || var.email == null
    error_message = "In scaled mode TLS ends at the load balancer: set certificate_arn (and domain), not email."
  }
}

variable "certificate_arn" {
  description = "scaled mode: ARN of an ACM certificate for domain; adds an HTTPS listener and redirects HTTP to it. null: HTTP only."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }

  validation {
    condition     = var.certificate_arn == null || var.mode == "scaled"
    error_message = "certificate_arn is for scaled mode; in single mode set domain and email and the VM gets its own certificate."
  }

  validation {
    condition     = var.mode != "scaled" || (var.certificate_arn == null) == (var.domain == null)
    error_message = "In scaled mode domain and certificate_arn go together: the certificate must cover the domain."
  }
}

variable "install_env" {
  description = "Settings for deploy/install.sh on the VMs, any knob from deploy/env.example, e.g. { WORKERS = \"2\", RATE_LIMIT_EXEMPT = \"127.0.0.0/8 ::1 203.0.113.7/32\" }. They end up in EC2 user data, which anyone allowed ec2:DescribeInstanceAttribute can read: no secrets."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for key in keys(var.install_env) : can(regex("^[A-Z][A-Z0-9_]*$", key))])
    error_message = "install_env keys must be upper-case knob names from deploy/env.example."
  }

  validation {
    # install.sh writes them into a systemd EnvironmentFile and refuses these characters.
    condition     = alltrue([for value in values(var.install_env) : can(regex("^[^\"'\\\\$`\n]*$", value))])
    error_message = "install_env values must not contain quotes, backslashes, $, backticks or line breaks."
  }

  validation {
    condition     = length(setintersection(keys(var.install_env), ["DOMAIN", "EMAIL", "TRUSTED_PROXIES", "MONITORING", "MONITORING_CIDR"])) == 0
    error_message = "DOMAIN, EMAIL, TRUSTED_PROXIES, MONITORING and MONITORING_CIDR are set from domain, email, mode, monitoring and monitoring_cidr; do not pass them in install_env."
  }

  validation {
    condition     = lookup(var.install_env, "API_KEYS", "off") == "off"
    error_message = "API keys must not travel in user data: the VM generates its own (sudo cat /etc/modelstack/api_keys in an SSM session). API_KEYS may only be \"off\"."
  }
}

variable "min_size" {
  description = "scaled mode: fewest instances the Auto Scaling Group keeps."
  type        = number
  default     = 2

  validation {
    condition     = var.min_size >= 1 && floor(var.min_size) == var.min_size
    error_message = "min_size must be a whole number of at least 1."
  }
}

variable "max_size" {
  description = "scaled mode: most instances the Auto Scaling Group may run."
  type        = number
  default     = 4

  validation {
    condition     = var.max_size >= var.min_size && var.max_size <= 100 && floor(var.max_size) == var.max_size
    error_message = "max_size must be a whole number between min_size and 100."
  }
}

variable "desired_capacity" {
  description = "scaled mode: instances to start with (null: min_size); the CPU target tracking policy moves it between min_size and max_size afterwards."
  type        = number
  default     = null

  validation {
    condition     = var.desired_capacity == null ? true : var.desired_capacity >= var.min_size && var.desired_capacity <= var.max_size
    error_message = "desired_capacity must lie between min_size and max_size."
  }
}

variable "cpu_target" {
  description = "scaled mode: average CPU utilisation (percent) the Auto Scaling Group steers towards."
  type        = number
  default     = 60

  validation {
    condition     = var.cpu_target >= 10 && var.cpu_target <= 90
    error_message = "cpu_target must be between 10 and 90 percent."
  }
}

variable "health_check_grace_period" {
  description = "scaled mode: seconds a new instance has to install the stack and warm its models before load balancer health checks count."
  type        = number
  default     = 600

  validation {
    condition     = var.health_check_grace_period >= 60 && var.health_check_grace_period <= 3600
    error_message = "health_check_grace_period must be between 60 and 3600 seconds."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}
